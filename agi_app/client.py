"""A synchronous Python client of the agi_app HTTP API.

For a CRM written in plain Python: no Twisted, no dependency beyond the
standard library.  It mirrors the call model's PHP example::

    from agi_app.client import Client

    client = Client("http://127.0.0.1:8080", "my-api-key")
    client.calls.extToPhone({"ext_number": "910", "phone_number": "0443334023"})

and offers the CRM endpoints as keyword-argument methods::

    call_id = client.make_call("1000", "380639920000", order_id="15", external_key="24")["call_id"]
    for entry in client.poll_history(after_id=last_seen_id):
        print(entry["call_id"], entry["status"])

Every non-2xx answer raises :class:`ApiError` (status, code, message, field and
the parsed body); a server that cannot be reached raises :class:`ApiUnavailable`
(a :class:`ConnectionError`).  The API key travels only in the ``X-API-Key``
header and never appears in a ``repr``, an exception or a log line.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from agi_app import __version__

__all__ = ["ApiError", "ApiUnavailable", "Calls", "Client", "Extension", "verify_signature"]

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024
# How much of a non-JSON error page is kept on ApiError.body.
_MAX_ERROR_TEXT = 2000


#: the server's default ring time of the operator's phone (CONTRACT 4: callTimeToExt)
DEFAULT_RING = 30.0
#: seconds extToPhone without async waits beyond the ring time, plus a margin
#: for the network (the server's own margin is 10 s)
OUTCOME_WAIT = 15.0

class ApiError(Exception):
    """The API answered with a non-2xx status.

    ``code``, ``message`` and ``field`` come from the contract's error body
    ``{"error": {"code", "message", "field"}}``; ``body`` is the whole parsed
    JSON answer (or the text of an answer that was not JSON), so extra members
    stay reachable, e.g. the existing call of a 409::

        try:
            client.make_call("1000", "380639920000", "15", "24")
        except ApiError as err:
            if err.status == 409:
                existing = err.body["call_id"]
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        body: Any = None,
    ):
        super().__init__(status, code, message, field, body)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.body = body

    @property
    def call_id(self) -> str | None:
        """The ``call_id`` beside ``error`` (409 on a reused ``external_key``), if any."""
        return self.body.get("call_id") if isinstance(self.body, dict) else None

    def __str__(self) -> str:
        where = f" (field {self.field})" if self.field else ""
        return f"HTTP {self.status} {self.code}: {self.message}{where}"


class ApiUnavailable(ConnectionError):
    """The API could not be reached, or the connection broke before a full answer."""


class Calls:
    """The call model (``POST /api/calls/{method}``), reached as ``client.calls``.

    Every method takes the seed's parameter names, as a dict, as keywords, or
    both (keywords win), and returns the answer, e.g.
    ``{"status": "success", "generalCallID": "…"}``.
    """

    def __init__(self, client: Client):
        self._client = client

    def _post(self, method: str, params: Mapping[str, Any] | None, extra: dict) -> Any:
        body = dict(params or {})
        body.update(extra)
        return self._client._request("POST", f"/api/calls/{method}", body=body)

    def extToPhone(self, params: Mapping[str, Any] | None = None, **kw: Any) -> Any:
        """Operator-first call: ``ext_number``, ``phone_number``; optional
        ``callTimeToExt``, ``limitCallTime``, ``playbackWaiting``, ``trunkNumber``,
        ``callerIdForEmployee``, ``async``, ``order_id``, ``external_key``.

        Without ``async`` the server answers once the operator's leg has an
        outcome: up to ``callTimeToExt`` (30 s by default) + 10 s.  The read
        timeout of this request follows that wait (a client that gave up
        earlier and retried without ``external_key`` would dial twice); pass
        ``callTimeToExt`` when the server's ``[dialing] call_time_to_ext``
        is not 30.

        >>> client.calls.extToPhone({"ext_number": "910", "phone_number": "0443334023"})
        {'status': 'success', 'generalCallID': '…', 'result': 'OPERATOR_PICKUP'}
        """
        body = dict(params or {})
        body.update(kw)
        timeout = None
        if str(body.get("async", "")).lower() not in ("1", "true", "yes", "on"):
            try:
                ring = float(body.get("callTimeToExt") or DEFAULT_RING)
            except (TypeError, ValueError):
                ring = DEFAULT_RING  # the server answers 400 at once
            timeout = max(self._client.timeout, ring + OUTCOME_WAIT)
        return self._client._request("POST", "/api/calls/extToPhone", body=body,
                                     timeout=timeout)  # fmt: skip

    def phoneToPhone(self, params: Mapping[str, Any] | None = None, **kw: Any) -> Any:
        """Two outside numbers: ``phoneNumber1``, ``phoneNumber2``, ``trunkNumber``;
        optional ``limitCallTime``, ``playbackWaiting``.

        >>> client.calls.phoneToPhone(phoneNumber1="0970002233",
        ...     phoneNumber2="0443334333", trunkNumber="pstn", limitCallTime=120)
        """
        return self._post("phoneToPhone", params, kw)

    def attendedCallTransfer(self, params: Mapping[str, Any] | None = None, **kw: Any) -> Any:
        """Transfer a call: ``generalCallID``, ``phone_number``.

        >>> client.calls.attendedCallTransfer({"generalCallID": cid, "phone_number": "912"})
        """
        return self._post("attendedCallTransfer", params, kw)

    def hangupCall(self, params: Mapping[str, Any] | None = None, **kw: Any) -> Any:
        """End a call: ``generalCallID``.

        >>> client.calls.hangupCall({"generalCallID": cid})
        """
        return self._post("hangupCall", params, kw)

    def callWithAnnouncement(self, params: Mapping[str, Any] | None = None, **kw: Any) -> Any:
        """Call a number and play a recorded message: ``phone_number``, ``voiceFileID``.

        >>> client.calls.callWithAnnouncement({"phone_number": "0443334023", "voiceFileID": "4"})
        """
        return self._post("callWithAnnouncement", params, kw)

    def callWithInteractiveVoiceResponse(
        self, params: Mapping[str, Any] | None = None, **kw: Any
    ) -> Any:
        """Call a number into an IVR menu: ``phone_number``, ``ivrName``.

        >>> client.calls.callWithInteractiveVoiceResponse(
        ...     {"phone_number": "0443334023", "ivrName": "confirmation-call"})
        """
        return self._post("callWithInteractiveVoiceResponse", params, kw)


class Extension:
    """One extension's current calls, event subscriptions and callback
    (``/extension/{extension_id}/…``), reached as ``client.extension("200")``."""

    def __init__(self, client: Client, extension_id: str):
        self._client = client
        self.extension_id = extension_id
        self._base = f"/extension/{_segment(extension_id, 'extension_id')}"

    def __repr__(self) -> str:
        return f"<Extension {self.extension_id!r} of {self._client!r}>"

    def current_calls(self) -> list[dict[str, Any]]:
        """The extension's calls in progress (the answer's ``call_list``).

        >>> [c["call_api_id"] for c in client.extension("200").current_calls()]
        """
        return self._client._request("GET", f"{self._base}/current_calls/")["call_list"]

    def call_action(self, call_api_id: str, action: str, send_dst: str | None = None) -> Any:
        """Act on a call: ``transfer``, ``attended_transfer``, ``eavesdrop``,
        ``whisper``, ``conference``, ``hold``, ``offhold``, ``park`` or ``pickup``;
        ``send_dst`` is needed by all but hold/offhold/park.

        >>> client.extension("200").call_action(call_api_id, "transfer", send_dst="201")
        {'status': 'success'}
        """
        body: dict[str, Any] = {"action": action}
        if send_dst is not None:
            body["send_dst"] = send_dst
        path = f"{self._base}/current_calls/{_segment(call_api_id, 'call_api_id')}"
        return self._client._request("PUT", path, body=body)

    def hangup(self, call_api_id: str) -> None:
        """Hang a call of this extension up.

        >>> client.extension("200").hangup(call_api_id)
        """
        path = f"{self._base}/current_calls/{_segment(call_api_id, 'call_api_id')}"
        self._client._request("DELETE", path)

    def subscribe(self, url: str, event_type: str, method: str = "POST") -> dict[str, Any]:
        """Have ``event_type`` events (``dial-in``, ``dial-out``, ``answer``,
        ``hangup``) delivered to ``url`` with ``method`` (GET or POST).  The
        answer's ``secret`` is what the deliveries' ``X-Signature`` is made with.

        >>> sub = client.extension("200").subscribe("http://10.0.0.5:9000/agi-events", "hangup")
        >>> sub["id"], sub["secret"]
        """
        body = {"url": url, "method": method, "event_type": event_type}
        return self._client._request("POST", f"{self._base}/event/", body=body)

    def subscriptions(self) -> list[dict[str, Any]]:
        """The extension's event subscriptions.

        >>> [s["event_type"] for s in client.extension("200").subscriptions()]
        """
        answer = self._client._request("GET", f"{self._base}/event/")
        # The contract fixes the items, not the envelope: take a bare list or
        # the list under "subscriptions".
        if isinstance(answer, dict):
            answer = answer.get("subscriptions", [])
        return answer

    def subscription(self, sub_id: int | str) -> dict[str, Any]:
        """One subscription by id."""
        return self._client._request("GET", f"{self._base}/event/{_segment(sub_id, 'sub_id')}")

    def unsubscribe(self, sub_id: int | str) -> None:
        """Delete a subscription; no more events are sent for it."""
        self._client._request("DELETE", f"{self._base}/event/{_segment(sub_id, 'sub_id')}")

    def callback(self, dst_num: str, src_num: Iterable[str] | str) -> dict[str, Any]:
        """Ring the ``src_num`` extensions together and connect the first to
        answer with ``dst_num``; answers ``{"call_api_id", "call_id"}``.

        >>> client.extension("200").callback("+79817654321", ["200"])["call_id"]
        """
        sources = [src_num] if isinstance(src_num, str) else [_text(s) for s in src_num]
        body = {"dst_num": _text(dst_num), "src_num": sources}
        return self._client._request("POST", f"{self._base}/callback/", body=body)


class Client:
    """A connection to one agi_app HTTP API.

    ``url`` is the API's base (``http://host:8080``, optionally with a path
    prefix when behind a reverse proxy); only http and https are accepted.
    ``api_key`` is one of the server's ``[http] api_keys`` (``None`` for an
    open API).  ``timeout`` bounds each connect and each read, in seconds.

    Redirects are not followed: the API never redirects, and following one
    would hand the key to whatever host the ``Location`` names.  Proxies from
    the environment (``http_proxy``…) are honoured as usual with urllib.

    The client keeps no connection open and holds no mutable state, so one
    instance may be shared between threads.
    """

    def __init__(self, url: str, api_key: str | None = None, *, timeout: float = 10.0):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"url must start with http:// or https://, got {url!r}")
        if not parts.hostname:
            raise ValueError(f"url has no host: {url!r}")
        if parts.username is not None or parts.password is not None:
            # Credentials in a URL end up in logs and tracebacks; the key has its own place.
            raise ValueError("url must not carry credentials; pass the key as api_key")
        if parts.query or parts.fragment:
            raise ValueError(f"url must not have a query or fragment: {url!r}")
        if api_key is not None:
            # Never echo the key itself, not even in this message.
            if not api_key or not all(" " < c < "\x7f" for c in api_key):
                raise ValueError("api_key must be non-empty printable ASCII without spaces")
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        self.url = urllib.parse.urlunsplit(
            (parts.scheme, parts.netloc, parts.path.rstrip("/"), "", "")
        )
        self.timeout = float(timeout)
        self._api_key = api_key
        self._opener = urllib.request.build_opener(_RefuseRedirects)
        self.calls = Calls(self)

    def __repr__(self) -> str:
        auth = "with key" if self._api_key else "without key"
        return f"<Client {self.url} {auth}>"

    # -- CRM endpoints (CONTRACT 3) ---------------------------------------

    def make_call(
        self,
        sip: str,
        phone: str,
        order_id: str,
        external_key: str,
        *,
        call_time_to_ext: int | None = None,
        limit_call_time: int | None = None,
        playback_waiting: bool | None = None,
        caller_id_for_employee: str | None = None,
        trunk: str | None = None,
    ) -> dict[str, Any]:
        """Operator-first click-to-call: ring ``sip``, then dial ``phone``.

        Answers ``{"call_id": "…"}`` once the call is created; its progress is
        in the history.  Repeating the request with the same ``external_key``
        and parameters returns the same ``call_id`` without a second call, so a
        request that timed out may safely be sent again.

        >>> client.make_call("1000", "380639920000", "15", "24", limit_call_time=600)
        {'call_id': '…'}
        """
        body = _drop_none(
            sip=_text(sip),
            phone=_text(phone),
            order_id=_text(order_id),
            external_key=_text(external_key),
            call_time_to_ext=call_time_to_ext,
            limit_call_time=limit_call_time,
            playback_waiting=_flag(playback_waiting),
            caller_id_for_employee=caller_id_for_employee,
            trunk=trunk,
        )
        return self._request("POST", "/api/makeCall.json", body=body)

    def record_list(self, page: int = 1, per_page: int = 20) -> dict[str, Any]:
        """Recordings, newest first: ``{"page", "per_page", "total", "records"}``.

        >>> [r["record_id"] for r in client.record_list(per_page=100)["records"]]
        """
        return self._request(
            "GET", "/api/recordList.json", query={"page": page, "per_page": per_page}
        )

    def order_records(self, order_id: str) -> dict[str, Any]:
        """An order's calls with their recordings: ``{"order_id", "calls"}``."""
        return self._request("GET", "/api/orderRecords.json", query={"order_id": _text(order_id)})

    def order_history(self, order_id: str, group_by_call: bool = False) -> dict[str, Any]:
        """An order's status history, flat (``history``) or per call (``calls``).

        >>> [e["status"] for e in client.order_history("15")["history"]]
        ['CALL', 'OPERATOR_CALLTO', 'OPERATOR_PICKUP', ...]
        """
        query = {"order_id": _text(order_id), "group_by_call": _flag(group_by_call)}
        return self._request("GET", "/api/orderHistory.json", query=query)

    def call_history(
        self,
        call_id: str | None = None,
        after_id: int | None = None,
        limit: int | None = None,
    ) -> dict[str, Any]:
        """History entries: of one call, or of every call after ``after_id``
        (ascending ``id``, at most ``limit``): ``{"history", "last_id"}``.
        :meth:`poll_history` does the cursor bookkeeping for you."""
        query = {"call_id": call_id, "after_id": after_id, "limit": limit}
        return self._request("GET", "/api/callHistory.json", query=query)

    def sip_list(
        self,
        page: int | None = None,
        per_page: int | None = None,
        status: str | Iterable[str] | None = None,
    ) -> dict[str, Any]:
        """Operators and their state; ``status`` filters (``"online"`` or
        ``["offline", "inuse"]``).

        >>> [s["sip"] for s in client.sip_list(status=["online"])["sips"]]
        """
        if status is not None and not isinstance(status, str):
            status = ",".join(status)
        query = {"page": page, "per_page": per_page, "status": status}
        return self._request("GET", "/api/sipList.json", query=query)

    def operator_history(
        self, sip: str | None = None, page: int | None = None, per_page: int | None = None
    ) -> dict[str, Any]:
        """Operator state changes, newest first, optionally of one ``sip``."""
        query = {"sip": _text(sip), "page": page, "per_page": per_page}
        return self._request("GET", "/api/operatorHistory.json", query=query)

    def download_record(
        self, record_id: int | str, dest_path: str | os.PathLike | IO[bytes]
    ) -> int:
        """Stream recording ``record_id`` to ``dest_path`` and return its size in bytes.

        The audio is written in chunks, never held in memory whole.  A path is
        written through a ``.part`` file renamed on success, so ``dest_path``
        never holds half a recording; a binary file object is written to as is.

        >>> for rec in client.record_list()["records"]:
        ...     client.download_record(rec["record_id"], f"/srv/calls/{rec['record_id']}.wav")
        """
        path = f"/records/{_segment(record_id, 'record_id')}"
        if hasattr(dest_path, "write"):
            return self._request("GET", path, stream_to=dest_path)
        dest = Path(dest_path)
        part = dest.with_name(dest.name + ".part")
        try:
            with open(part, "wb") as f:
                size = self._request("GET", path, stream_to=f)
            os.replace(part, dest)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        return size

    def health(self) -> dict[str, Any]:
        """``GET /health``: the AMI/FastAGI/store state.  While the AMI session
        is not logged in the server answers 503: that raises :class:`ApiError`
        whose ``body`` holds the same state."""
        return self._request("GET", "/health")

    def poll_history(
        self,
        after_id: int = 0,
        interval: float = 1.0,
        limit: int = 100,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Iterator[dict[str, Any]]:
        """Yield every history entry after ``after_id``, forever, in ``id`` order.

        Pages are fetched back to back while entries keep coming; only an
        empty answer makes it sleep ``interval`` seconds.  No entry is yielded
        twice and none is skipped.  Keep the last ``entry["id"]`` you handled
        to resume after a restart.  A server that is unreachable or answers
        5xx is retried after ``interval`` (and logged); a 4xx (a wrong key,
        say) is raised, as retrying cannot fix it.

        >>> for entry in client.poll_history(after_id=load_cursor()):
        ...     crm.update_order(entry["order_id"], entry["status"])
        ...     save_cursor(entry["id"])
        """
        cursor = int(after_id)
        while True:
            try:
                answer = self.call_history(after_id=cursor, limit=limit)
            except (ApiUnavailable, ApiError) as err:
                if isinstance(err, ApiError) and err.status < 500:
                    raise
                log.warning("call history unavailable (%s); retrying in %ss", err, interval)
                sleep(interval)
                continue
            fresh = False
            for entry in answer.get("history") or ():
                # Guard against a server that repeats the cursor's own entry.
                if entry["id"] > cursor:
                    cursor = entry["id"]
                    fresh = True
                    yield entry
            if not fresh:
                sleep(interval)

    # -- Current calls, events, callback (CONTRACT 5, 6) -------------------

    def extension(self, extension_id: str) -> Extension:
        """The ``/extension/{extension_id}/`` resources of one extension.

        >>> ext = client.extension("200")
        >>> ext.subscribe("http://10.0.0.5:9000/agi-events", "answer")
        """
        return Extension(self, _text(extension_id))

    # -- transport ---------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        stream_to: IO[bytes] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send one request; return the decoded JSON answer (``None`` for an
        empty one), or with ``stream_to`` the number of bytes copied there.
        ``timeout``: this request's, instead of the client's."""
        url = self.url + path
        if query:
            pairs = [(k, _query_value(v)) for k, v in query.items() if v is not None]
            if pairs:
                url += "?" + urllib.parse.urlencode(pairs)
        headers = {"Accept": "application/json", "User-Agent": f"agi_app-client/{__version__}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json; charset=utf-8"
        if self._api_key is not None:
            headers["X-API-Key"] = self._api_key
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        what = f"{method} {path}"
        try:
            resp = self._opener.open(req, timeout=timeout or self.timeout)
        except urllib.error.HTTPError as e:
            try:
                raw = _read_all(e, what) if e.fp is not None else b""
            finally:
                e.close()
            raise _api_error(e.code, e.reason, raw) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            raise ApiUnavailable(f"{what}: {_reason(e)}") from None
        with resp:
            if stream_to is not None:
                return _copy(resp, stream_to, what)
            raw = _read_all(resp, what)
            if not raw.strip():
                return None
            try:
                return json.loads(raw)
            except ValueError:
                raise ApiError(
                    resp.status,
                    "invalid_response",
                    f"{what}: the answer is not JSON",
                    body=raw[:_MAX_ERROR_TEXT].decode("utf-8", "replace"),
                ) from None


def verify_signature(
    secret: str,
    signature: str,
    payload: bytes | str,
    *,
    tolerance: float = 300.0,
    now: float | None = None,
) -> bool:
    """Check an event delivery's ``X-Signature`` header (CONTRACT 6) in the
    CRM's receiver.

    ``secret`` is the one :meth:`Extension.subscribe` returned; ``payload`` is
    the raw request body of a POST delivery, or the raw query string (after
    ``?``, exactly as received) of a GET delivery.  A signature older or newer
    than ``tolerance`` seconds is refused, so a captured delivery cannot be
    replayed later.

    >>> if not verify_signature(sub["secret"], request.headers["X-Signature"], request.body):
    ...     return 403
    """
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    stamp, candidates = None, []
    for part in signature.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t":
            stamp = value
        elif name == "v1":
            candidates.append(value)
    if stamp is None or not (stamp.isascii() and stamp.isdigit()) or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - int(stamp)) > tolerance:
        return False
    expected = (
        hmac.new(secret.encode("utf-8"), stamp.encode("ascii") + b"." + payload, hashlib.sha256)
        .hexdigest()
        .encode("ascii")
    )
    # Compared as bytes: compare_digest refuses non-ASCII text with TypeError.
    return any(hmac.compare_digest(expected, c.lower().encode("utf-8")) for c in candidates)


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Turn every 3xx into an HTTPError instead of following it (and resending the key)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def _read_all(resp: Any, what: str) -> bytes:
    try:
        return resp.read()
    except (http.client.HTTPException, OSError) as e:
        raise ApiUnavailable(f"{what}: the answer broke off ({_reason(e)})") from None


def _copy(resp: Any, out: IO[bytes], what: str) -> int:
    expected = resp.headers.get("Content-Length")
    size = 0
    while True:
        try:
            chunk = resp.read(_CHUNK)
        except (http.client.HTTPException, OSError) as e:
            raise ApiUnavailable(f"{what}: the download broke off ({_reason(e)})") from None
        if not chunk:
            break
        out.write(chunk)  # write errors (disk full) are the caller's, not the network's
        size += len(chunk)
    # http.client returns a short body quietly when the peer closes early.
    if expected is not None and expected.isdigit() and size != int(expected):
        raise ApiUnavailable(f"{what}: the download broke off after {size} of {expected} bytes")
    return size


def _api_error(status: int, reason: str | None, raw: bytes) -> ApiError:
    try:
        body: Any = json.loads(raw)
    except ValueError:
        body = raw[:_MAX_ERROR_TEXT].decode("utf-8", "replace")
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        return ApiError(
            status,
            str(err.get("code") or f"http_{status}"),
            str(err.get("message") or reason or ""),
            err.get("field"),
            body,
        )
    return ApiError(status, f"http_{status}", str(reason or "") or f"HTTP {status}", None, body)


def _reason(e: BaseException) -> str:
    if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
        return str(e.reason)
    return str(e) or type(e).__name__


def _segment(value: object, name: str) -> str:
    """One path segment: percent-encoded, and never '.' or '..' (which would
    make the server see another path)."""
    text = str(value)
    if text in ("", ".", ".."):
        raise ValueError(f"{name} must not be empty, '.' or '..'")
    return urllib.parse.quote(text, safe="")


def _text(value: Any) -> Any:
    """Numbers given for ids/phones travel as text, as the API defines them."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _flag(value: bool | None) -> int | None:
    return None if value is None else int(bool(value))


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _drop_none(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}
