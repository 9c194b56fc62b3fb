"""The one error hierarchy of agi_app.

Every part raises an :class:`AppError` (or a subclass) when a request from
outside cannot be carried out; the HTTP API and the widget's WebSocket render
any of them the same way: HTTP ``status`` with ``{"error": {"code",
"message", "field"?}, **extra}``, or a widget ``error`` message with the same
``code`` and ``message``.  Anything else that escapes a handler is a bug: a
500 ``internal`` without details, and a traceback in the service log.

The subclasses name the situations more than one layer meets:

* :class:`InvalidInput` (400): a value broke an input rule (CONTRACT
  section 3); :mod:`agi_app.validation` raises it;
* :class:`NotFound` (404), :class:`Conflict` (409);
* :class:`PBXUnavailable` (503): the AMI link is down.  A call that was
  created before that was found carries its ``call_id`` (its history shows
  CALL then ERROR).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CATALOGUE",
    "HTTP",
    "WIDGET",
    "AppError",
    "Conflict",
    "ErrorCode",
    "InvalidInput",
    "NotFound",
    "PBXUnavailable",
]


class AppError(Exception):
    """A request that cannot be carried out, with its answer.

    :param message: for people (an English sentence)
    :param code: for programs (``invalid_phone``, ``unknown_call``...);
        default: the class's ``code``
    :param field: the parameter at fault, when one is
    :param status: the HTTP status; default: the class's ``status``
    :param extra: keys beside ``"error"`` in the answer (e.g. ``call_id``)
    :param headers: HTTP headers of the answer (e.g. ``Allow``)
    """

    status: int = 500
    code: str = "internal"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        field: str | None = None,
        status: int | None = None,
        extra: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The answer body: ``{"error": {"code", "message", "field"?}, **extra}``."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        return {"error": error, **self.extra}


class InvalidInput(AppError, ValueError):
    """A value from outside broke an input rule: 400 naming the field.

    ``code`` defaults to ``invalid_<field>``.
    """

    status = 400

    def __init__(self, field: str, message: str, code: str | None = None):
        super().__init__(message, code=code or f"invalid_{field}", field=field)


class NotFound(AppError, LookupError):
    """No such object (404)."""

    status = 404
    code = "not_found"


class Conflict(AppError):
    """The request contradicts the state of things (409)."""

    status = 409
    code = "conflict"


class PBXUnavailable(AppError):
    """The AMI link is down: nothing was sent to the PBX (503).

    ``call_id`` is the call that was created and closed with ERROR before
    that was found, if any.
    """

    status = 503
    code = "pbx_unavailable"

    def __init__(self, call_id: str | None = None, message: str = "the PBX is unreachable"):
        super().__init__(message, extra={"call_id": call_id} if call_id else None)
        self.call_id = call_id


# -- the catalogue ----------------------------------------------------------------

#: the channels an error code is sent on
HTTP, WIDGET = "HTTP", "widget"


@dataclass(frozen=True)
class ErrorCode:
    """One error code as a client meets it (``docs/errors.md``).

    ``code`` may be a family with ``<field>`` (``invalid_<field>``);
    ``statuses`` the HTTP status(es) it is sent with (none: widget only); ``channels``
    :data:`HTTP` and/or :data:`WIDGET`; ``meaning`` what happened, and
    ``action`` what the client should do about it.  Where it is raised is
    read from the code (:mod:`agi_app.errordocs`)."""

    code: str
    statuses: tuple[int, ...]
    channels: tuple[str, ...]
    meaning: str
    action: str


_BOTH = (HTTP, WIDGET)

#: Every code agi_app sends.  A code used in the source but missing here, or
#: listed here but sent nowhere, fails ``tests/unit/test_docs_errors.py``.
CATALOGUE: tuple[ErrorCode, ...] = (
    # -- 400: the request is wrong; sending it again unchanged fails again
    ErrorCode("missing_<field>", (400,), _BOTH,
              "A required parameter (or widget message field) is absent, empty or null.",
              "Send the parameter named in `field`."),
    ErrorCode("invalid_<field>", (400,), _BOTH,
              "The parameter named in `field` breaks its rule (format, range, choice); "
              "`message` says the rule.",
              "Fix the value; the rules are in api.md and /openapi.json. Do not retry unchanged."),
    ErrorCode("repeated_parameter", (400,), (HTTP,),
              "A single-valued parameter was given more than once.", "Send it once."),
    ErrorCode("invalid_query", (400,), (HTTP,),
              "The query string cannot be read: too many fields, not UTF-8, bad %-escapes.",
              "Percent-encode the query as UTF-8; send fewer fields."),
    ErrorCode("invalid_body", (400,), (HTTP,),
              "The body cannot be read: not valid JSON/form/multipart, too deeply nested, "
              "too many values, or an unsupported Content-Type.",
              "Send a JSON object, a form or multipart text fields."),
    ErrorCode("invalid_path", (400,), (HTTP,),
              "The path is not valid UTF-8 or not percent-encoded.", "Fix the URL."),
    ErrorCode("unsafe_value", (400,), (HTTP,),
              "A value that would go into a SIP header or dial string holds a line break or NUL.",
              "Remove control characters from the value."),
    ErrorCode("unknown_trunk", (400,), (HTTP,),
              "`trunk`/`trunkNumber` names no trunk of `[dialing] default_trunk`/`trunks`.",
              "Use a configured trunk, or leave it out for the default."),
    ErrorCode("unknown_ivrName", (400,), (HTTP,),
              "`ivrName` names no menu of the IVR file, or no IVR file is loaded.",
              "Use a menu name of `[ivr] path` (docs/ivr.md); an admin checks the log line "
              "`IVR: ...`."),
    ErrorCode("unknown_voiceFileID", (400,), (HTTP,),
              "`voiceFileID` names no installed recorded message.",
              "Use a prompt installed with `agi-app install-sounds` (docs/features.md)."),
    ErrorCode("forbidden_target", (400,), (HTTP,),
              "A webhook or CRM lookup URL points where agi_app may not send (a private, "
              "loopback or link-local address outside `[events]`/`[crm] allowed_networks`, or "
              "one of agi_app's own ports), or its host name cannot be used.",
              "Use a public http(s) URL, or have the admin allow the network."),
    ErrorCode("too_many_subscriptions", (400,), (HTTP,),
              "The extension already has the most event subscriptions allowed (100).",
              "Delete subscriptions it no longer needs (`DELETE "
              "/extension/{id}/event/{event_id}`) first."),
    # -- 401 / 403 / 404 / 405 / 410 / 413 / 414
    ErrorCode("unauthorized", (401,), (HTTP,),
              "No `X-API-Key` header (or `api_key` parameter), or a wrong one, while "
              "`[http] api_keys` is set.",
              "Send a configured key."),
    ErrorCode("invalid_signature", (403,), (HTTP,),
              "A signed recording link whose signature is missing, malformed or does not match.",
              "Ask the API for a new link (`signed=1`); never edit one."),
    ErrorCode("not_found", (404,), (HTTP,), "No such path.",
              "Check the URL (see api.md); a typo in the route or method name."),
    ErrorCode("unknown_call", (404,), _BOTH,
              "No such call, or the extension takes no part in it (call control, widget "
              "`transfer`, callHistory with `call_id`).",
              "Use a `call_id`/`call_api_id` from current_calls or the events; the call may "
              "have ended."),
    ErrorCode("unknown_extension", (404,), _BOTH,
              "The extension is not an endpoint of the PBX (or is a trunk).",
              "Use an extension the PBX knows (`/api/sipList`)."),
    ErrorCode("unknown_order", (404,), (HTTP,),
              "No calls stored for this `order_id`.",
              "Check the order id; an erased or purged order has none."),
    ErrorCode("unknown_phone", (404,), (HTTP,),
              "Nothing stored for this phone number (erasure).", "Nothing to erase."),
    ErrorCode("unknown_record", (404,), (HTTP,), "No recording with this id.",
              "Use a `record_id` from recordList/orderRecords."),
    ErrorCode("record_gone", (404,), (HTTP,),
              "The recording is known but its file is gone (retention or removed by hand).",
              "Treat the recording as deleted."),
    ErrorCode("unknown_subscription", (404,), (HTTP,),
              "No subscription with this id for this extension.",
              "List the extension's subscriptions (`GET /extension/{id}/event/`)."),
    ErrorCode("method_not_allowed", (405,), (HTTP,),
              "The path exists, not for this method; the `Allow` header lists the methods.",
              "Use a method of `Allow`."),
    ErrorCode("link_expired", (410,), (HTTP,),
              "A correctly signed recording link past its `expires`.",
              "Ask the API for a new link."),
    ErrorCode("body_too_large", (413,), (HTTP,), "The body is over 64 KiB.",
              "Send less."),
    ErrorCode("uri_too_long", (414,), (HTTP,), "The URI is over 8 KiB.",
              "Send the parameters in a POST body."),
    # -- 409: the request is fine, the state of things is not
    ErrorCode("external_key_conflict", (409,), (HTTP,),
              "`external_key` was used before with other parameters; `call_id` beside "
              "`error` is the existing call.",
              "Use a new key for a new call; repeat a request exactly to get its call back."),
    ErrorCode("auto_answer_unavailable", (409,), (HTTP,),
              "Auto-answer was asked for but `[dialing] auto_answer_headers` is empty or "
              "`operator_channel` is not PJSIP.",
              "Call without auto-answer, or have the admin configure it."),
    ErrorCode("call_in_progress", (409,), (HTTP,),
              "An erasure while a call of its subject is going on; nothing was erased. "
              "`call_ids` beside `error`.",
              "Ask again once the calls have ended."),
    ErrorCode("signed_links_disabled", (409,), (HTTP,),
              "`signed=1` where links cannot be signed (no `[http] link_secret` and no API key).",
              "Ask without `signed=1`, or have the admin set a link secret."),
    ErrorCode("widget_tokens_disabled", (409,), (HTTP,),
              "`POST /api/widgetToken` while `[websocket] token_secret` is not set.",
              "Have the admin set `token_secret`."),
    ErrorCode("not_possible", (409,), _BOTH,
              "The call is not in a state this action applies to (no other party, no party "
              "that can transfer, no parking space reported...); `message` says which.",
              "Refresh the call's state (current_calls) before acting again."),
    ErrorCode("not_connected", (409,), _BOTH,
              "The action needs a connected (answered, bridged) call.",
              "Wait until the call is answered."),
    ErrorCode("not_on_hold", (409,), (HTTP,), "`offhold` of a call that is not on hold.",
              "Nothing to do."),
    ErrorCode("not_ringing", (409,), (HTTP,),
              "`pickup` of a call that is not ringing at the extension.",
              "Refresh the call's state; it was answered or ended."),
    ErrorCode("not_live", (409,), (HTTP,),
              "The call exists in the store and has no final status, but the PBX has no "
              "channel of it (attendedCallTransfer, hangupCall...).",
              "Retry shortly; agi_app settles the call (its final status follows in the "
              "history)."),
    ErrorCode("call_ended", (409,), (HTTP,),
              "The call has ended; `message` names its final status.", "Nothing to do."),
    ErrorCode("<field>_offline", (409,), _BOTH,
              "The destination extension is not registered (`send_dst_offline`, "
              "`phone_number_offline`).",
              "Choose another destination, or wait until the phone is online."),
    ErrorCode("pbx_refused", (409,), _BOTH,
              "Asterisk refused the AMI action; `message` carries its reason.",
              "Check the call's state; an admin reads the PBX's log."),
    ErrorCode("no_user_phone", (), (WIDGET,),
              "`call`/`transfer` before the widget has a user phone.",
              "`set_phone` (or connect with a token or `user_phone`) first."),
    ErrorCode("calls_unavailable", (), (WIDGET,),
              "This server does not place calls for widgets.", "Use the HTTP API."),
    ErrorCode("transfer_unavailable", (), (WIDGET,),
              "This server runs without call control.", "Use the HTTP API's call control."),
    ErrorCode("read_only", (), (WIDGET,),
              "`call`, `transfer` or `set_phone` on a supervisor (dashboard) connection, "
              "which watches every extension and acts as none.",
              "Act from a widget connected for the extension."),
    ErrorCode("not_supervisor", (), (WIDGET,),
              "A dashboard request on a connection made with a widget token or a "
              "`client_id`: only a supervisor token (`POST /api/supervisorToken`) sees "
              "every extension.",
              "Open the dashboard with a supervisor token."),
    # -- widget messages that are not requests
    ErrorCode("binary_message", (), (WIDGET,), "A binary WebSocket frame.",
              "Send JSON text frames."),
    ErrorCode("message_too_large", (), (WIDGET,),
              "A message over 4096 bytes (over 64 KiB the connection is closed, 1009).",
              "Send smaller messages."),
    ErrorCode("invalid_json", (), (WIDGET,), "The message is not JSON.", "Send JSON."),
    ErrorCode("invalid_message", (), (WIDGET,),
              'The message is not a JSON object with a string `"type"`.',
              "Send an object with a `type`."),
    ErrorCode("unknown_type", (), (WIDGET,), "No such message type.",
              "Use a type of docs/widget.md."),
    # -- 5xx: not the client's fault
    ErrorCode("internal", (500,), _BOTH,
              "A bug: the server logged it with a traceback; no details are sent.",
              "Report it with the time of the request; retrying may not help."),
    ErrorCode("erasure_failed", (500,), (HTTP,),
              "Recording files could not be removed; nothing more of the subject was erased.",
              "Ask again once the admin has fixed the file permissions."),
    ErrorCode("unknown_pbx", (400,), _BOTH,
              "`pbx` names no configured PBX (`[ami]` is `default`, each `[ami:NAME]` "
              "another); nothing was stored.",
              "Use a PBX name from `/health` (`pbxs`) or leave `pbx` out."),
    ErrorCode("pbx_unavailable", (503,), _BOTH,
              "The AMI link to Asterisk is down: nothing was sent to the PBX. A call created "
              "before that was found carries its `call_id` (history: CALL then ERROR).",
              "Retry later with a new `external_key`, or after checking /health; "
              "an admin checks the AMI link."),
)
