"""The ``record`` event end to end: a click-to-call on the sandbox PBX is
recorded; once the recording is complete a subscription for ``record``
receives an event whose ``RecordURL`` downloads the WAV without an API key,
until the link expires (``[http] record_link_ttl``, a few seconds here)."""

from __future__ import annotations

import time
from urllib.parse import parse_qsl, urlsplit

import pytest
import pytest_twisted
import treq
from callflow import HTTP_PORT, Api, reactor, recording_settled, wait_final
from twisted.internet import defer, task

from agi_app.client import verify_signature
from agi_app.events.testing import Receiver
from agi_app.sandbox.phones import answer

RECEIVER_PORT = HTTP_PORT + 5
KEY = "e2e-record-key"
TTL = 6


@pytest.fixture
def app_settings() -> dict[str, str]:
    return {
        "AGI_APP_HTTP_API_KEYS": KEY,
        "AGI_APP_HTTP_RECORD_LINK_TTL": str(TTL),
        "AGI_APP_EVENTS_RETRY_DELAY": "0.2",
        "AGI_APP_EVENTS_MAX_RETRY_DELAY": "1",
    }


@pytest_twisted.async_yield_fixture
async def receiver():
    crm = Receiver()
    port = reactor().listenTCP(RECEIVER_PORT, crm.site(), interface="127.0.0.1")
    yield crm
    await port.stopListening()


async def download(url: str) -> tuple[int, bytes]:
    """GET ``url`` as a CRM would hand it to a browser: no API key."""
    response = await treq.get(url, persistent=False)
    return response.code, await response.content()


@pytest_twisted.ensureDeferred
async def test_record_event_carries_a_link_that_works_without_a_key_until_it_expires(
    sandbox, app, receiver
):
    api = Api()
    code, sub = await api.post(
        f"/extension/1000/event/?api_key={KEY}",
        {"url": f"http://127.0.0.1:{RECEIVER_PORT}/hook", "event_type": "record"},
    )
    assert code == 201 and sub["event_type"] == "record", sub
    sandbox.phones.start("1000", answer(after=0.3))
    sandbox.pstn.set("380639920041", answer_after=0.5, hangup_after=2)
    code, body = await api.get(
        "/api/makeCall.json", sip="1000", phone="380639920041", order_id="ord-rec",
        external_key="k-rec", api_key=KEY,
    )  # fmt: skip
    assert code == 200, body
    call_id = body["call_id"]
    await wait_final(app, call_id)
    try:
        [request] = await receiver.wait_for(1).addTimeout(30, reactor())
    except defer.TimeoutError:
        raise AssertionError("no record event within 30 s") from None
    assert verify_signature(sub["secret"], request.headers["x-signature"],
                            request.signed_payload)  # fmt: skip
    fields = request.fields
    assert fields["EventType"] == "record"
    assert (fields["CallID"], fields["OrderID"], fields["ExternalKey"]) == (
        call_id, "ord-rec", "k-rec")  # fmt: skip
    assert (fields["CallerExtension"], fields["CalledNumber"]) == ("1000", "380639920041")
    # the event comes once size and duration are stored
    record = await recording_settled(app, int(fields["RecordID"]))
    assert record["call_id"] == call_id and record["size"] > 44
    assert 1 <= int(fields["Duration"]) <= 4, fields
    url = fields["RecordURL"]
    parts = urlsplit(url)
    assert parts.path == f"/records/{record['record_id']}"
    expires = int(dict(parse_qsl(parts.query))["expires"])
    assert expires - TTL - 5 <= time.time() <= expires
    # no key: the plain URL is refused, the signed link downloads the WAV
    code, _ = await download(f"http://127.0.0.1:{HTTP_PORT}{parts.path}")
    assert code == 401
    code, audio = await download(url)
    assert code == 200 and audio[:4] == b"RIFF" and audio[8:12] == b"WAVE"
    assert len(audio) == record["size"]
    # a changed link is refused
    sig = dict(parse_qsl(parts.query))["sig"]
    forged = url.replace(f"expires={expires}", f"expires={expires + 3600}")
    assert (await download(forged))[0] == 403
    assert (await download(url.replace(sig, sig[::-1])))[0] == 403
    # past expires it is gone
    wait = expires - time.time() + 0.5
    if wait > 0:
        await task.deferLater(reactor(), wait, lambda: None)
    code, body = await download(url)
    assert code == 410 and b"link_expired" in body
