"""Signed recording links (agi_app.links), the /records route that takes
them without an API key, ``signed=1`` of recordList/orderRecords, the
``record`` webhook event, the recorder's completion callback, and the
configuration keys of links and retention."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
import pytest_twisted
from test_events_generator import AutoSender
from test_tracker import TrackerTestCase
from twisted.internet import defer, task

from agi_app.calls.recording import WAV_HEADER, Recorder, Recording
from agi_app.config import ConfigError, DialingConfig, load
from agi_app.events.delivery import DeliverySettings
from agi_app.events.generator import CallInfo, EventGenerator
from agi_app.events.service import EventService, check_event_type
from agi_app.events.testing import MemoryEventStore
from agi_app.links import InvalidSignature, LinkExpired, RecordLinks, link_secret
from agi_app.netguard import TargetGuard
from agi_app.store import SQLiteStore
from agi_app.store.testing import MemoryStore, fired
from agi_app.web import Router, build_site, history
from agi_app.web.history import HistoryEndpoints
from agi_app.web.testing import MemoryHTTP

T0 = 1_795_640_677.0
PUBLIC = "https://pbx.example.test:8443"
KEY = "k-123"
SECRET = b"s" * 32


def _reactor():
    from twisted.internet import reactor

    return reactor


def make_links(clock, ttl: int = 600) -> RecordLinks:
    return RecordLinks(SECRET, public_url=PUBLIC + "/", ttl=ttl, clock=clock)


def link_args(url: str) -> tuple[int, int, str]:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    return int(parts.path.rsplit("/", 1)[1]), int(query["expires"]), query["sig"]


# -- signing and checking ------------------------------------------------------------


def test_a_link_names_the_record_and_its_expiry_and_checks_until_then():
    clock = task.Clock()
    clock.advance(T0)
    links = make_links(clock)
    url = links.url(42)
    assert url.startswith(f"{PUBLIC}/records/42?expires={int(T0) + 600}&sig=")
    record_id, expires, sig = link_args(url)
    links.check(record_id, expires, sig)
    clock.advance(599)
    links.check(record_id, expires, sig)
    clock.advance(1)
    with pytest.raises(LinkExpired) as expired:
        links.check(record_id, expires, sig)
    assert (expired.value.status, expired.value.code) == (410, "link_expired")
    assert link_args(links.url(42, ttl=5))[1] == int(clock.seconds()) + 5


@pytest.mark.parametrize("change", ["record", "expires", "sig", "key", "case", "short", "none"])
def test_a_changed_link_is_refused_before_its_time_is_looked_at(change):
    clock = task.Clock()
    clock.advance(T0)
    links = make_links(clock)
    record_id, expires, sig = link_args(links.url(42))
    flipped = ("0" if sig[10] != "0" else "1")
    if change == "record":
        record_id += 1
    elif change == "expires":
        expires += 3600  # a longer life
    elif change == "sig":
        sig = sig[:10] + flipped + sig[11:]
    elif change == "key":
        links = RecordLinks(b"t" * 32, public_url=PUBLIC, ttl=600, clock=clock)
    elif change == "case":
        sig = sig.upper()
    elif change == "short":
        sig = sig[:-2]
    else:
        sig = None
    clock.advance(10_000)  # expired too: the signature is what is answered
    with pytest.raises(InvalidSignature) as refused:
        links.check(record_id, expires, sig)
    assert (refused.value.status, refused.value.code) == (403, "invalid_signature")


def test_the_link_secret_is_configured_derived_from_the_first_key_or_random():
    assert link_secret("x" * 16, ("k1",)) == (b"x" * 16, "[http] link_secret")
    derived, source = link_secret("", ("k1", "k2"))
    assert "api_keys" in source and len(derived) == 32
    assert derived == link_secret("", ("k1",))[0] != link_secret("", ("k2",))[0]
    assert b"k1" not in derived
    one, source = link_secret("", ())
    assert len(one) == 32 and one != link_secret("", ())[0] and "random" in source
    with pytest.raises(ValueError):
        RecordLinks(b"", public_url=PUBLIC, ttl=1, clock=task.Clock())


# -- the /records route with signed links ------------------------------------------------------


@pytest.fixture
def clock() -> task.Clock:
    c = task.Clock()
    c.advance(T0)
    return c


@pytest.fixture
def store(tmp_path: Path, clock: task.Clock):
    s = SQLiteStore(str(tmp_path / "store.sqlite3"), reactor=_reactor(), clock=clock)
    s.open()
    yield s
    pytest_twisted.blockon(s.close())


def site_of(store, links):
    endpoints = HistoryEndpoints(store, public_url=PUBLIC, links=links)
    router, signed = Router(), Router()
    endpoints.add_routes(router)
    endpoints.add_signed_routes(signed)
    site = build_site(router, api_keys=(KEY,), static_dir=None, clock=_reactor(), signed=signed)
    return MemoryHTTP(site, _reactor())


@pytest.fixture
def links(clock) -> RecordLinks:
    return make_links(clock)


@pytest.fixture
def http(store, links):
    return site_of(store, links)


async def fetch(http, url: str, headers=None):
    parts = urlsplit(url)
    local = "http://127.0.0.1" + parts.path + (f"?{parts.query}" if parts.query else "")
    response = await http.get(local, headers=headers or {})
    return response.code, await response.content()


async def recorded(store, tmp_path: Path, order_id="o-1") -> dict:
    call, _ = await store.create_call(
        call_id=f"c-{order_id}", kind="makeCall", sip="1000", phone="380639920000",
        order_id=order_id, external_key=None, params={},
    )  # fmt: skip
    path = tmp_path / f"{order_id}.wav"
    path.write_bytes(b"RIFF-audio")
    return await store.add_recording(call_id=call["call_id"], path=str(path), size=10)


@pytest_twisted.ensureDeferred
async def test_a_signed_link_downloads_without_a_key_until_it_expires(http, store, links,
                                                                      clock, tmp_path):  # fmt: skip
    rec = await recorded(store, tmp_path)
    url = links.url(rec["record_id"])
    assert await fetch(http, url) == (200, b"RIFF-audio")
    assert (await fetch(http, url.replace("/records/", "/RECORDS/")))[0] == 200
    # a wrong key does not matter: the link decides
    assert (await fetch(http, url + "&api_key=wrong"))[0] == 200
    code, body = await fetch(http, f"/records/{rec['record_id']}")
    assert code == 401  # without the signature a key is needed, as before
    clock.advance(links.ttl)
    code, body = await fetch(http, url)
    assert (code, json.loads(body)["error"]["code"]) == (410, "link_expired")


@pytest_twisted.ensureDeferred
async def test_a_changed_or_incomplete_link_is_refused(http, store, links, tmp_path):
    rec = await recorded(store, tmp_path)
    other = await recorded(store, tmp_path, "o-2")
    record_id, expires, sig = link_args(links.url(rec["record_id"]))
    cases = {
        f"/records/{other['record_id']}?expires={expires}&sig={sig}": (403, "invalid_signature"),
        f"/records/{record_id}?expires={expires + 1}&sig={sig}": (403, "invalid_signature"),
        f"/records/{record_id}?expires={expires}&sig={'0' * 64}": (403, "invalid_signature"),
        f"/records/{record_id}?expires={expires}&sig=": (400, "missing_sig"),
        f"/records/{record_id}?sig={sig}": (400, "missing_expires"),
        f"/records/{record_id}?expires={expires}&sig=xyz": (400, "invalid_sig"),
        f"/records/{record_id}?expires=soon&sig={sig}": (400, "invalid_expires"),
    }
    for path, (status, error) in cases.items():
        code, body = await fetch(http, path)
        assert (code, json.loads(body)["error"]["code"]) == (status, error), path


@pytest_twisted.ensureDeferred
async def test_a_signed_link_to_a_removed_file_is_record_gone(http, store, links, tmp_path):
    rec = await recorded(store, tmp_path)
    Path(rec["path"]).unlink()
    code, body = await fetch(http, links.url(rec["record_id"]))
    assert (code, json.loads(body)["error"]["code"]) == (404, "record_gone")


@pytest_twisted.ensureDeferred
async def test_record_list_and_order_records_hand_out_signed_links(http, store, tmp_path):
    rec = await recorded(store, tmp_path)
    auth = {"X-API-Key": KEY}
    code, body = await fetch(http, "/api/recordList.json", auth)
    assert json.loads(body)["records"][0]["url"] == f"{PUBLIC}/records/{rec['record_id']}"
    code, body = await fetch(http, "/api/recordList.json?signed=1", auth)
    page = json.loads(body)
    assert (code, page["total"]) == (200, 1)
    [listed] = page["records"]
    assert listed["url"].startswith(f"{PUBLIC}/records/{rec['record_id']}?expires=")
    assert {k for k in listed if k != "url"} == {
        "record_id", "call_id", "order_id", "external_key", "sip", "phone", "created_at",
        "duration", "size", "pbx",
    }  # fmt: skip
    assert await fetch(http, listed["url"]) == (200, b"RIFF-audio")
    code, body = await fetch(http, "/api/orderRecords.json?order_id=o-1&signed=yes", auth)
    [record] = json.loads(body)["calls"][0]["records"]
    assert await fetch(http, record["url"]) == (200, b"RIFF-audio")


@pytest_twisted.ensureDeferred
async def test_without_link_signing_signed_is_refused_and_sig_needs_the_key(store, tmp_path):
    http = site_of(store, None)
    rec = await recorded(store, tmp_path)
    code, body = await fetch(http, "/api/recordList.json?signed=1", {"X-API-Key": KEY})
    assert (code, json.loads(body)["error"]["code"]) == (409, "signed_links_disabled")
    url = make_links(task.Clock()).url(rec["record_id"])
    assert (await fetch(http, url))[0] == 401
    router = Router()
    history.add_routes(router, store, public_url=PUBLIC)  # the module's own helper
    assert router.routes


# -- the recorder's completion callback --------------------------------------------------------


def test_the_recorder_calls_back_with_the_completed_recording(tmp_path):
    clock = task.Clock()
    clock.advance(T0)
    store = MemoryStore(clock)
    fired(store.create_call(call_id="c1", kind="makeCall", sip="1000", phone="380631112233",
                            order_id="o", external_key=None, params={}))  # fmt: skip
    dialing = DialingConfig(recordings_dir=str(tmp_path))
    recorder = Recorder(store=store, dialing=dialing, clock=clock, live=lambda c: False)
    seen: list[dict] = []
    stop = recorder.on_complete(seen.append)
    recorder.on_complete(lambda rec: 1 / 0)  # a failing one does not stop the others
    path = tmp_path / "o_c1.wav"
    path.write_bytes(b"\0" * (WAV_HEADER + 32000))
    rec = Recording("c1", str(path), T0)
    fired(defer.ensureDeferred(recorder.store_it(rec)))
    recorder.finish(rec)
    clock.advance(0.5)
    assert seen == []  # one look at the size is not enough
    clock.advance(0.5)
    [done] = seen
    assert (done["record_id"], done["size"], done["duration"]) == (rec.record_id, 32044, 2.0)
    stop()
    stop()  # twice is harmless


# -- the record event ----------------------------------------------------------------------------


class RecordEventTests(TrackerTestCase):
    def setUp(self):
        super().setUp()
        self.store = MemoryEventStore()
        self.sender = AutoSender()
        self.service = EventService(
            self.store, send=self.sender, clock=self.reactor, settings=DeliverySettings(),
            guard=TargetGuard(["127.0.0.0/8"]),
        )  # fmt: skip
        self.successResultOf(defer.ensureDeferred(self.service.start()))
        self.links = make_links(self.reactor)
        info = CallInfo(self.store, public_url=PUBLIC)
        self.generator = EventGenerator(self.tracker, self.service, info, self.links.url)
        self.generator.start()

    def subscribe(self, ext, kind):
        self.successResultOf(defer.ensureDeferred(self.service.subscribe(
            ext, url=f"http://127.0.0.1:9/{ext}", method="POST", event_type=kind)))  # fmt: skip

    def delivered(self):
        return [dict(parse_qsl(r.body.decode())) for r in self.sender.requests]

    def click_to_call(self, call_id="c-77"):
        self.store.calls[call_id] = {
            "order_id": "ord-15", "external_key": "k-15", "kind": "makeCall", "sip": "1000",
            "phone": "380639920001", "params": {},
        }  # fmt: skip
        sim = self.sim
        sim.new("PJSIP/1000-00000019", "agiapp-1", context="sandbox-operators",
                num="380639920001", cname="Order 15", var=call_id)  # fmt: skip
        sim.dial(None, "agiapp-1", "1000")
        sim.state("agiapp-1", "Ringing")
        sim.state("agiapp-1", "Up")
        sim.new("PJSIP/pstn-0000001a", "cl-1", linkedid="agiapp-1", num="380639920001",
                var=call_id)  # fmt: skip
        sim.dial("agiapp-1", "cl-1", "380639920001@pstn")
        sim.state("cl-1", "Up")
        sim.bridge("br-3", "agiapp-1", "cl-1")
        self.reactor.advance(5)
        sim.hangup("cl-1")
        sim.hangup("agiapp-1")

    def test_a_completed_recording_gives_the_operator_a_record_event_with_a_signed_link(self):
        self.subscribe("1000", "record")
        self.subscribe("1001", "record")  # took no part
        self.click_to_call()
        self.assertEqual(self.delivered(), [])  # nothing before the recording is complete
        self.generator.recording_complete(
            {"record_id": 9, "call_id": "c-77", "duration": 5.4, "size": 86444}
        )
        [event] = self.delivered()
        self.assertEqual(event["EventType"], "record")
        self.assertEqual((event["CallID"], event["CallAPIID"]), ("c-77", "c-77"))
        self.assertEqual((event["OrderID"], event["ExternalKey"]), ("ord-15", "k-15"))
        self.assertEqual((event["CallFlow"], event["CallerExtension"]), ("out", "1000"))
        self.assertEqual(event["CalledNumber"], "380639920001")
        self.assertEqual((event["RecordID"], event["Duration"]), ("9", "5"))
        self.links.check(*link_args(event["RecordURL"]))
        self.assertTrue(event["RecordURL"].startswith(f"{PUBLIC}/records/9?expires="))
        self.assertTrue(self.sender.requests[0].url.endswith("/1000"))

    def test_after_a_restart_the_operator_still_gets_it_from_the_store(self):
        self.subscribe("1000", "record")
        self.store.calls["c-80"] = {
            "order_id": None, "external_key": None, "kind": "makeCall", "sip": "1000",
            "phone": "380639920009", "params": {},
        }  # fmt: skip
        self.generator.recording_complete({"record_id": 3, "call_id": "c-80", "duration": None})
        [event] = self.delivered()
        self.assertEqual((event["CallerExtension"], event["CalledNumber"]),
                         ("1000", "380639920009"))  # fmt: skip
        self.assertNotIn("Duration", event)
        self.assertNotIn("OrderID", event)

    def test_no_record_event_without_a_subscription_or_without_links(self):
        self.subscribe("1000", "hangup")
        self.click_to_call()
        self.generator.recording_complete({"record_id": 9, "call_id": "c-77", "duration": 1.0})
        self.assertEqual([e["EventType"] for e in self.delivered()], ["hangup"])
        plain = EventGenerator(self.tracker, self.service, CallInfo(self.store, public_url=PUBLIC))
        self.subscribe("1000", "record")
        plain.recording_complete({"record_id": 9, "call_id": "c-77", "duration": 1.0})
        self.assertEqual([e["EventType"] for e in self.delivered()], ["hangup"])


def test_record_is_an_event_type_one_can_subscribe_to():
    assert check_event_type(" Record ") == "record"


# -- configuration ---------------------------------------------------------------------------


def test_retention_and_link_settings_load_and_are_checked():
    cfg = load(None, environ={})
    assert (cfg.retention.history_days, cfg.retention.recordings_days) == (0, 0)
    assert (cfg.http.record_link_ttl, cfg.http.link_secret) == (3600, "")
    cfg = load(None, environ={
        "AGI_APP_RETENTION_HISTORY_DAYS": "730", "AGI_APP_RETENTION_RECORDINGS_DAYS": "90",
        "AGI_APP_HTTP_RECORD_LINK_TTL": "60", "AGI_APP_HTTP_LINK_SECRET": "x" * 16,
    })  # fmt: skip
    assert (cfg.retention.history_days, cfg.retention.recordings_days) == (730, 90)
    assert (cfg.http.record_link_ttl, cfg.http.link_secret) == (60, "x" * 16)
    for key, value, says in (
        ("RETENTION_HISTORY_DAYS", "-1", r"\[retention\] history_days"),
        ("RETENTION_RECORDINGS_DAYS", "36501", r"\[retention\] recordings_days"),
        ("RETENTION_INTERVAL", "10", r"\[retention\] interval"),
        ("RETENTION_BATCH_SIZE", "0", r"\[retention\] batch_size"),
        ("HTTP_RECORD_LINK_TTL", "0", r"\[http\] record_link_ttl"),
        ("HTTP_RECORD_LINK_TTL", "604801", r"\[http\] record_link_ttl"),
        ("HTTP_LINK_SECRET", "short", r"\[http\] link_secret"),
    ):
        with pytest.raises(ConfigError, match=says):
            load(None, environ={f"AGI_APP_{key}": value})


def test_the_application_wires_links_retention_and_erasure():
    from twisted.internet.testing import MemoryReactorClock

    from agi_app.app import Application

    config = load(None, environ={
        "AGI_APP_HTTP_API_KEYS": "k1", "AGI_APP_HTTP_RECORD_LINK_TTL": "90",
        "AGI_APP_RETENTION_HISTORY_DAYS": "30", "AGI_APP_RETENTION_BATCH_SIZE": "50",
    })  # fmt: skip
    app = Application(config, MemoryReactorClock())
    assert (app.retention.history_days, app.retention.batch_size) == (30, 50)
    assert app.links.ttl == 90 and "api_keys" in app.link_secret_source
    # the links are signed with the key derived from the first API key
    again = RecordLinks(link_secret("", ("k1",))[0], public_url=config.http.public_url, ttl=90,
                        clock=app.reactor)  # fmt: skip
    again.check(*link_args(app.links.url(5)))
    [signed] = app.signed_router().routes
    assert (signed.pattern, signed.auth) == ("/records/{record_id}", False)
    patterns = {(r.pattern, m) for r in app.router().routes for m in r.methods}
    assert {("/api/orderData", "DELETE"), ("/api/phoneData", "DELETE")} <= patterns
