"""The CRM lookup client: answers, garbage, deadlines on a task.Clock, the
cache, and the SSRF guard -- against the fake CRM resource in memory
(treq's RequestTraversalAgent), or a MemoryReactorClock where the guard is
under test (nothing ever leaves the process)."""

from __future__ import annotations

import dataclasses

import pytest
from treq.testing import RequestTraversalAgent
from twisted.internet import task
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from agi_app.config import Config, ConfigError, CRMConfig, EventsConfig, load
from agi_app.inbound.lookup import (
    FAILED,
    FOUND,
    MAX_ANSWER,
    OFF,
    TIMEOUT,
    UNKNOWN,
    Caller,
    CRMLookup,
    crm_link,
    lookup_guard,
    read_answer,
)
from agi_app.inbound.testing import CRMAnswer, FakeCRM
from agi_app.netguard.testing import LoopbackResolver
from agi_app.validation import InvalidInput

URL = "http://crm.test/lookup?phone={phone}"
PHONE = "380501234567"


class LookupTestCase(SynchronousTestCase):
    settings = CRMConfig(lookup_url=URL)

    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(1_795_644_000)
        self.crm = FakeCRM(self.clock)
        self.agent = RequestTraversalAgent(self.crm)
        self.lookup = CRMLookup(self.settings, agent=self.agent, clock=self.clock)

    def ask(self, phone=PHONE):
        d = self.lookup.lookup(phone)
        self.agent.flush()
        return d

    def answer(self, phone=PHONE):
        return self.successResultOf(self.ask(phone))


class AnswerTests(LookupTestCase):
    def test_a_known_caller(self):
        self.crm.answers[PHONE] = CRMAnswer.caller(
            name="Ivan Petrenko", operator="1001", url="https://crm.example/c/17"
        )
        found = self.answer()
        self.assertEqual(found.outcome, FOUND)
        self.assertEqual(found.caller, Caller("Ivan Petrenko", "1001", "https://crm.example/c/17"))
        self.assertEqual((found.why, found.cached), ("", False))
        [seen] = self.crm.requests
        self.assertEqual(seen.phone, PHONE)
        self.assertEqual(seen.headers["accept"], "application/json")

    def test_the_number_is_url_quoted_into_the_url(self):
        self.crm.answers["+380501234567"] = CRMAnswer.caller(name="Plus")
        self.assertEqual(self.answer("+380501234567").caller.name, "Plus")
        self.assertEqual(self.crm.requests[0].path, b"/lookup?phone=%2B380501234567")
        self.assertEqual(self.lookup.url_for("+1"), "http://crm.test/lookup?phone=%2B1")

    def test_not_found_is_unknown(self):
        for code in (404, 204):
            self.crm.answers[f"38050000{code}"] = CRMAnswer(code, b"")
            self.assertEqual(self.answer(f"38050000{code}").outcome, UNKNOWN)
        self.crm.answers["380500000200"] = CRMAnswer.caller()  # {}
        self.assertEqual(self.answer("380500000200").outcome, UNKNOWN)
        self.crm.answers["380500000201"] = CRMAnswer.caller(name=None, operator="", url=None)
        self.assertEqual(self.answer("380500000201").outcome, UNKNOWN)

    def test_a_number_that_is_no_phone_number_is_not_asked_about(self):
        for caller in (None, "", "anonymous", "sipp", "12", "1" * 16, "380 50", "+", "38050<1>"):
            self.assertEqual(self.answer(caller).outcome, OFF, caller)
        self.assertEqual(self.crm.requests, [])

    def test_without_a_lookup_url_nothing_is_asked(self):
        lookup = CRMLookup(CRMConfig(), agent=self.agent, clock=self.clock)
        self.assertFalse(lookup.enabled)
        result = self.successResultOf(lookup.lookup(PHONE))
        self.assertEqual((result.outcome, result.caller), (OFF, Caller()))
        self.assertEqual(self.crm.requests, [])

    def test_the_configured_header_is_sent(self):
        settings = CRMConfig(lookup_url=URL, lookup_header="Authorization: Bearer t0k-en")
        lookup = CRMLookup(settings, agent=self.agent, clock=self.clock)
        d = lookup.lookup(PHONE)
        self.agent.flush()
        self.successResultOf(d)
        self.assertEqual(self.crm.requests[0].headers["authorization"], "Bearer t0k-en")


class GarbageTests(LookupTestCase):
    def outcome(self, answer: CRMAnswer):
        self.crm.answers[PHONE] = answer
        self.lookup._cache.clear()
        return self.answer()

    def test_error_statuses_and_redirects_fail(self):
        for code in (500, 503, 401, 302, 201):
            result = self.outcome(CRMAnswer(code, {"name": "X"}))
            self.assertEqual((result.outcome, result.why), (FAILED, f"HTTP {code}"))
            self.assertEqual(result.caller, Caller())
        # the redirect was not followed
        self.assertEqual(len(self.crm.requests), 5)

    def test_bodies_that_are_no_json_object_fail(self):
        nested = b"[" * 5000 + b"]" * 5000
        for body in (b"", b"<html>oops</html>", b'"Ivan"', b"[1, 2]", b"null", b"17",
                     b'{"name": "Iv', b"\xff\xfe\x00garbage", nested):  # fmt: skip
            result = self.outcome(CRMAnswer(200, body))
            self.assertEqual((result.outcome, result.caller), (FAILED, Caller()), body[:20])

    def test_an_answer_bigger_than_the_limit_fails(self):
        big = {"name": "Ivan", "padding": "x" * MAX_ANSWER}
        result = self.outcome(CRMAnswer(200, big))
        self.assertEqual(result.outcome, FAILED)
        self.assertIn("over", result.why)

    def test_each_field_is_checked_on_its_own(self):
        result = self.outcome(CRMAnswer.caller(
            name='Ivan "the boss"', operator="1001", url="javascript:alert(1)"))  # fmt: skip
        self.assertEqual(result.outcome, FOUND)
        self.assertEqual(result.caller, Caller(None, "1001", None))
        self.assertIn("dropped name", result.why)
        self.assertIn("dropped url", result.why)
        result = self.outcome(CRMAnswer.caller(name="Ivan", operator="1001&PJSIP/evil"))
        self.assertEqual(result.caller, Caller("Ivan", None, None))
        result = self.outcome(CRMAnswer.caller(name="\n\r", operator=["1001"], url=17))
        self.assertEqual((result.outcome, result.caller), (UNKNOWN, Caller()))
        self.assertEqual(result.why.count("dropped"), 3)

    def test_read_answer_rules(self):
        caller, dropped = read_answer({"name": "  Олена Коваль ", "operator": 1001,
                                       "url": "https://crm.example/c?id=1&x=%20"})  # fmt: skip
        self.assertEqual(caller, Caller("Олена Коваль", "1001", "https://crm.example/c?id=1&x=%20"))
        self.assertEqual(dropped, [])
        for name in ("x" * 65, "a,b", "a<b>", "tab\there", "O'Brien", "semi;colon", True):
            self.assertIsNone(read_answer({"name": name})[0].name, name)
        with self.assertRaises(ValueError):
            read_answer(["name"])

    def test_crm_links(self):
        self.assertEqual(crm_link("http://crm/c/1"), "http://crm/c/1")
        long = "https://crm.example/" + "a" * 2100
        for bad in ("", "ftp://crm/c", "javascript:alert(1)", "data:text/html,x", "https://",
                    "https://crm/a b", "https://crm/\x00", long, "http://crm:99999/", None, 3,
                    "//crm/c"):  # fmt: skip
            with self.assertRaises(InvalidInput, msg=bad):
                crm_link(bad)
        self.assertEqual(len(crm_link("https://crm.example/" + "a" * 2028)), 2048)


class DeadlineTests(LookupTestCase):
    def test_a_crm_that_does_not_answer_is_given_up_at_the_timeout(self):
        self.crm.answers[PHONE] = CRMAnswer.caller(delay=None, name="Late")
        d = self.ask()
        self.clock.advance(1.49)
        self.assertNoResult(d)
        self.clock.advance(0.01)
        result = self.successResultOf(d)
        self.assertEqual((result.outcome, result.caller), (TIMEOUT, Caller()))
        self.assertEqual(result.seconds, 1.5)
        # the request was abandoned: the connection is closed
        self.agent.flush()
        [pending] = self.crm.pending
        self.assertTrue(pending._disconnected)

    def test_an_answer_after_the_timeout_is_not_used_nor_kept(self):
        self.crm.answers[PHONE] = CRMAnswer.caller(delay=2.0, name="Late")
        d = self.ask()
        self.clock.advance(1.5)
        self.assertEqual(self.successResultOf(d).outcome, TIMEOUT)
        self.clock.advance(1.0)  # the CRM answers now, to nobody
        self.agent.flush()
        self.assertEqual(self.lookup.cached, 0)
        self.crm.answers[PHONE] = CRMAnswer.caller(name="Now")
        self.assertEqual(self.answer().caller.name, "Now")

    def test_a_body_that_never_ends_is_given_up_at_the_timeout(self):
        self.crm.answers[PHONE] = CRMAnswer(200, {"name": "Slow"}, stall=True)
        d = self.ask()
        self.assertNoResult(d)
        self.clock.advance(1.5)
        self.assertEqual(self.successResultOf(d).outcome, TIMEOUT)
        self.agent.flush()
        self.assertTrue(self.crm.pending[0]._disconnected)

    def test_the_timeout_is_the_configured_one(self):
        lookup = CRMLookup(CRMConfig(lookup_url=URL, lookup_timeout=0.3), agent=self.agent,
                           clock=self.clock)  # fmt: skip
        self.crm.answers[PHONE] = CRMAnswer.caller(delay=0.31, name="Late")
        d = lookup.lookup(PHONE)
        self.agent.flush()
        self.clock.advance(0.3)
        self.assertEqual(self.successResultOf(d).outcome, TIMEOUT)

    def test_an_answer_within_the_timeout_is_used(self):
        self.crm.answers[PHONE] = CRMAnswer.caller(delay=1.4, name="Just in time")
        d = self.ask()
        self.clock.advance(1.4)
        self.agent.flush()
        result = self.successResultOf(d)
        self.assertEqual((result.outcome, result.caller.name), (FOUND, "Just in time"))
        self.assertAlmostEqual(result.seconds, 1.4, places=3)


class CacheTests(LookupTestCase):
    settings = CRMConfig(lookup_url=URL, lookup_cache_seconds=60, lookup_cache_size=2)

    def test_an_answer_is_kept_for_the_next_call(self):
        self.crm.answers[PHONE] = CRMAnswer.caller(name="Ivan")
        self.assertFalse(self.answer().cached)
        self.clock.advance(59)
        again = self.answer()
        self.assertEqual((again.outcome, again.caller.name, again.cached), (FOUND, "Ivan", True))
        self.assertEqual(len(self.crm.requests), 1)
        self.clock.advance(1)  # 60 s after the answer: asked again
        self.crm.answers[PHONE] = CRMAnswer.caller(name="Ivan P.")
        self.assertEqual(self.answer().caller.name, "Ivan P.")
        self.assertEqual(len(self.crm.requests), 2)

    def test_unknown_callers_are_kept_failures_are_not(self):
        self.answer("380500000001")  # 404
        self.assertTrue(self.answer("380500000001").cached)
        self.crm.answers["380500000002"] = CRMAnswer(500, b"")
        self.answer("380500000002")
        self.assertFalse(self.answer("380500000002").cached)
        self.crm.answers["380500000003"] = CRMAnswer(delay=None)
        d = self.ask("380500000003")
        self.clock.advance(1.5)
        self.assertEqual(self.successResultOf(d).outcome, TIMEOUT)
        self.assertEqual([r.phone for r in self.crm.requests],
                         ["380500000001", "380500000002", "380500000002", "380500000003"])

    def test_the_cache_is_bounded_and_drops_the_least_recently_used(self):
        for phone in ("380500000001", "380500000002"):
            self.answer(phone)
        self.answer("380500000001")  # used again: now the most recent
        self.answer("380500000003")
        self.assertEqual(self.lookup.cached, 2)
        self.assertTrue(self.answer("380500000001").cached)
        self.assertTrue(self.answer("380500000003").cached)
        self.assertFalse(self.answer("380500000002").cached)

    def test_no_cache_with_zero_seconds(self):
        lookup = CRMLookup(CRMConfig(lookup_url=URL, lookup_cache_seconds=0), agent=self.agent,
                           clock=self.clock)  # fmt: skip
        for _ in range(2):
            d = lookup.lookup(PHONE)
            self.agent.flush()
            self.assertFalse(self.successResultOf(d).cached)
        self.assertEqual(len(self.crm.requests), 2)


class GuardTests(SynchronousTestCase):
    """The lookup connects only where webhooks may, plus [crm]
    allowed_networks; refusals happen before any connection is attempted."""

    def config(self, url, events=(), crm=(), **more):
        return dataclasses.replace(
            Config(),
            events=EventsConfig(allowed_networks=events),
            crm=CRMConfig(lookup_url=url, allowed_networks=crm),
            **more,
        )

    def run_lookup(self, config, resolver=None):
        reactor = MemoryReactorClock()
        lookup = CRMLookup.from_config(config, reactor, resolver=resolver)
        d = lookup.lookup(PHONE)
        return reactor, d

    def test_loopback_is_refused_without_allowed_networks(self):
        reactor, d = self.run_lookup(self.config("http://127.0.0.1:18099/l?p={phone}"))
        result = self.successResultOf(d)
        self.assertEqual(result.outcome, FAILED)
        self.assertIn("loopback", result.why)
        self.assertEqual(reactor.tcpClients, [])

    def test_a_name_resolving_to_loopback_is_refused(self):
        resolver = LoopbackResolver({"crm.example": ["127.0.0.1"]})
        reactor, d = self.run_lookup(self.config("https://crm.example/l?p={phone}"), resolver)
        self.assertEqual(self.successResultOf(d).outcome, FAILED)
        self.assertEqual(resolver.lookups, ["crm.example"])
        self.assertEqual(reactor.tcpClients, [])

    def test_events_or_crm_allowed_networks_let_it_through(self):
        for events, crm in ((("127.0.0.0/8",), ()), ((), ("127.0.0.0/8",))):
            config = self.config("http://127.0.0.1:18099/l?p={phone}", events, crm)
            reactor, d = self.run_lookup(config)
            self.assertNoResult(d)
            [(host, port, *_rest)] = reactor.tcpClients
            self.assertEqual((host, port), ("127.0.0.1", 18099))
            # nothing answers (a memory reactor): the deadline ends it
            reactor.advance(1.5)
            self.assertEqual(self.successResultOf(d).outcome, TIMEOUT)

    def test_own_ports_are_never_a_target(self):
        config = self.config("http://127.0.0.1:5038/l?p={phone}", crm=("127.0.0.0/8",))
        reactor, d = self.run_lookup(config)
        result = self.successResultOf(d)
        self.assertEqual(result.outcome, FAILED)
        self.assertIn("AMI", result.why)
        self.assertEqual(reactor.tcpClients, [])

    def test_the_guard_widens_only_by_crm_networks(self):
        guard = lookup_guard(self.config(URL, ("10.0.0.0/8",), ("192.168.1.0/24",)))
        import ipaddress

        for address, refused in (("10.1.1.1", False), ("192.168.1.7", False),
                                 ("192.168.2.7", True), ("127.0.0.1", True)):  # fmt: skip
            reason = guard.refusal(ipaddress.ip_address(address), 443)
            self.assertEqual(reason is not None, refused, address)


# -- configuration ------------------------------------------------------------------


def crm_env(**values: str) -> dict[str, str]:
    return {f"AGI_APP_CRM_{k.upper()}": v for k, v in values.items()}


def test_crm_defaults() -> None:
    crm = load(None, environ={}).crm
    assert (crm.lookup_url, crm.lookup_timeout, crm.lookup_cache_seconds) == ("", 1.5, 60)
    assert (crm.lookup_cache_size, crm.lookup_header, crm.header) == (1000, "", None)
    assert load(None, environ={}).inbound.group == ()


def test_crm_settings_are_read() -> None:
    cfg = load(None, environ={
        **crm_env(lookup_url="https://crm.example/lookup?phone={phone}&src=pbx",
                  lookup_timeout="0.8", lookup_header="Authorization:  Bearer a.b-c ",
                  allowed_networks="10.1.2.0/24"),
        "AGI_APP_INBOUND_GROUP": "1000, 1001,1002",
    })  # fmt: skip
    assert cfg.crm.lookup_timeout == 0.8
    assert cfg.crm.header == ("Authorization", "Bearer a.b-c")
    assert cfg.crm.allowed_networks == ("10.1.2.0/24",)
    assert cfg.inbound.group == ("1000", "1001", "1002")


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("lookup_url", "https://crm.example/lookup", "{phone}"),
        ("lookup_url", "ftp://crm.example/{phone}", "http"),
        ("lookup_url", "javascript:alert('{phone}')", "http"),
        ("lookup_url", "https:///{phone}", "host"),
        ("lookup_url", "https://user:pw@crm.example/{phone}", "user@"),
        ("lookup_url", "https://{phone}.crm.example/", "not the host"),
        ("lookup_url", "https://crm.example:99999/{phone}", "valid"),
        ("lookup_url", "https://crm.example/{phone}#top", "fragment"),
        ("lookup_url", "https://crm.example/ä/{phone}", "ASCII"),
        ("lookup_url", "https://crm.example/" + "a" * 2048 + "{phone}", "2048"),
        ("lookup_timeout", "0", "positive"),
        ("lookup_timeout", "11", "at most 10"),
        ("lookup_timeout", "soon", "number"),
        ("lookup_cache_seconds", "-1", "negative"),
        ("lookup_cache_seconds", "90000", "86400"),
        ("lookup_cache_size", "0", "1..1000000"),
        ("lookup_header", "Bearer abc", "Name: value"),
        ("lookup_header", "Bad Name: x", "Name: value"),
        ("lookup_header", "Host: evil.example", "set by agi_app"),
        ("lookup_header", "X-Token: tök", "printable ASCII"),
        ("lookup_header", "X-Token:", "printable ASCII"),
        ("allowed_networks", "10.0.0.0/33", "not a network"),
    ],
)
def test_bad_crm_settings_name_the_key(key: str, value: str, says: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load(None, environ=crm_env(**{key: value}))
    assert f"[crm] {key}" in str(raised.value)
    assert says in str(raised.value)


def test_bad_group_members_name_the_key() -> None:
    for group in ("1000,PJSIP/1001", "1000,10 01", "1000,1001&1002"):
        with pytest.raises(ConfigError, match=r"\[inbound\] group"):
            load(None, environ={"AGI_APP_INBOUND_GROUP": group})


def test_a_control_character_in_the_header_is_refused() -> None:
    with pytest.raises(ConfigError, match="control characters"):
        load(None, environ=crm_env(lookup_header="X-Token: a\r\nHost: evil"))
