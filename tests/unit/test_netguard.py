"""The outgoing-URL guard: how hosts are read, which addresses are refused,
allowed networks and own ports, and the guarded endpoint on a memory
reactor (a refused target never reaches connectTCP)."""

from __future__ import annotations

import ipaddress

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import DNSLookupError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import URI

from agi_app.config import load
from agi_app.netguard import (
    ForbiddenTarget,
    GuardedEndpoint,
    GuardedEndpointFactory,
    NetworkSet,
    TargetGuard,
    listen_port,
    parse_host,
    parse_networks,
    why_forbidden,
)
from agi_app.netguard.testing import LoopbackResolver

ip = ipaddress.ip_address


@pytest.mark.parametrize(
    "host, expected",
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0X7F000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("127.0.0.1.", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("0127.0.0.1", "87.0.0.1"),  # octal, as inet_aton reads it
        ("169.254.43518", "169.254.169.254"),
        ("0", "0.0.0.0"),
        ("1.2.3.0x", "1.2.3.0"),  # "0x" alone is 0 (WHATWG)
        ("[::1]", "::1"),
        ("::ffff:127.0.0.1", "::ffff:7f00:1"),
        ("crm.example.com", "crm.example.com"),
        ("CRM.Example.COM.", "crm.example.com"),
        ("deadbeef", "deadbeef"),  # hex letters, but not a number
        ("1e3.example", "1e3.example"),
    ],
)
def test_parse_host(host, expected):
    got = parse_host(host)
    assert str(got) == expected


@pytest.mark.parametrize(
    "host",
    ["08.0.0.1", "1.2.3.4.5", "256.0.0.1", "4294967296", "0x100000000", "1.2.3.09",
     "1..2", "::1%25lo", "fe80::1%eth0", "a b", "evil@127.0.0.1", "x.-y", ":::"],
)  # fmt: skip
def test_parse_host_refuses_what_is_no_plain_host(host):
    with pytest.raises(ForbiddenTarget) as e:
        parse_host(host)
    assert e.value.code == "forbidden_target" and e.value.field == "url"
    assert e.value.status == 400


@pytest.mark.parametrize(
    "address, word",
    [
        ("127.0.0.1", "loopback"), ("127.255.0.9", "loopback"), ("10.1.2.3", "private"),
        ("172.16.0.1", "private"), ("172.31.255.255", "private"), ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"), ("100.64.0.1", "shared"), ("100.127.255.254", "shared"),
        ("0.0.0.0", "unspecified"), ("0.1.2.3", "unspecified"), ("224.0.0.1", "multicast"),
        ("239.1.1.1", "multicast"), ("240.0.0.1", "reserved"), ("255.255.255.255", "reserved"),
        ("192.0.0.8", "reserved"), ("192.0.2.1", "documentation"), ("198.18.0.1", "benchmarking"),
        ("::1", "loopback"), ("::", "unspecified"), ("fe80::1", "link-local"),
        ("fd00::1", "unique local"), ("fec0::1", "site-local"), ("ff02::1", "multicast"),
        ("ff0e::1", "multicast"), ("::ffff:127.0.0.1", "loopback"), ("::ffff:10.0.0.1", "private"),
        ("::127.0.0.1", "IPv4-compatible"), ("::8.8.8.8", "IPv4-compatible"),
        ("64:ff9b::127.0.0.1", "127.0.0.1, a loopback"),
        ("64:ff9b::169.254.169.254", "link-local"), ("64:ff9b:1::1", "local NAT64"),
        ("2002:7f00:1::", "127.0.0.1, a loopback"), ("2002:a00:1::", "private"),
        ("::ffff:0:127.0.0.1", "loopback"), ("2001:db8::1", "documentation"),
        ("2001::1", "Teredo"), ("100::1", "discard"), ("4000::1", "not global unicast"),
    ],
)  # fmt: skip
def test_forbidden_addresses(address, word):
    reason = why_forbidden(ip(address))
    assert reason is not None and word in reason


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "93.184.216.34", "100.63.255.255", "100.128.0.0", "172.32.0.1",
     "2606:4700::1111", "2a00:1450::1", "::ffff:8.8.8.8", "64:ff9b::8.8.8.8", "2002:808:808::"],
)  # fmt: skip
def test_public_addresses(address):
    assert why_forbidden(ip(address)) is None


def test_network_set_finds_mapped_addresses_in_ipv4_networks():
    nets = NetworkSet(["127.0.0.0/8", "fd00::/8"])
    assert ip("127.0.0.5") in nets and ip("::ffff:127.0.0.5") in nets and "127.9.9.9" in nets
    assert ip("fd00::1") in nets
    assert ip("::1") not in nets and ip("10.0.0.1") not in nets and "junk" not in nets
    assert not NetworkSet() and NetworkSet(["::1"])


def test_parse_networks():
    assert [str(n) for n in parse_networks(["10.1.2.3/8", " ::1 "])] == ["10.0.0.0/8", "::1/128"]
    with pytest.raises(ValueError, match="'10.0.0.0/33'"):
        parse_networks(["10.0.0.0/33"])


@pytest.mark.parametrize(
    "description, port",
    [("tcp:8080:interface=127.0.0.1", 8080), ("tcp:port=4573", 4573), ("tcp6:10150", 10150),
     (r"tcp6:8080:interface=\:\:1", 8080), ("ssl:8443:privateKey=k.pem", 8443),
     ("unix:/run/agi.sock", None)],
)  # fmt: skip
def test_listen_port(description, port):
    assert listen_port(description) == port


class GuardTests(SynchronousTestCase):
    def refused(self, guard: TargetGuard, url: str) -> str:
        with self.assertRaises(ForbiddenTarget) as e:
            guard.check_url(url)
        return e.exception.message

    def test_every_spelling_of_an_internal_host_is_refused(self):
        guard = TargetGuard()
        for url in (
            "http://169.254.169.254/latest/meta-data/", "http://127.0.0.1:5038/",
            "http://[::1]/", "http://10.0.0.1/", "http://0x7f000001/", "http://2130706433/",
            "http://0177.0.0.1/", "http://127.1/", "http://[::ffff:127.0.0.1]/",
            "http://127.0.0.1./", "http://evil@127.0.0.1/", "http://a:b@crm.example.com/",
            "http://localhost:9/", "http://api.localhost/", "http://LOCALHOST./",
            "https://[64:ff9b::7f00:1]/", "http://0/", "http://[::]/", "http://08.0.0.1/",
        ):  # fmt: skip
            self.refused(guard, url)

    def test_names_and_public_addresses_pass(self):
        guard = TargetGuard()
        for url in ("https://crm.example.com/hook", "http://8.8.8.8:8080/x",
                    "http://[2606:4700::1111]/", "http://rebind.test/"):  # fmt: skip
            guard.check_url(url)

    def test_messages_name_the_address(self):
        message = self.refused(TargetGuard(), "http://2130706433/")
        self.assertEqual(
            message,
            "url: 2130706433 is 127.0.0.1, a loopback address "
            "(allowed: public addresses and [events] allowed_networks)",
        )

    def test_allowed_networks_let_addresses_through_but_not_own_ports(self):
        guard = TargetGuard(
            ["127.0.0.0/8", "10.1.0.0/16"], own_ports=[(8080, "agi_app's HTTP API")]
        )
        guard.check_url("http://127.0.0.1:9000/hook")
        guard.check_url("http://[::ffff:127.0.0.1]:9000/hook")
        guard.check_url("http://0x7f000001:9000/hook")
        guard.check_url("http://10.1.2.3/hook")
        guard.check_url("http://localhost:9000/")  # 127.0.0.1 passes, ::1 does not
        self.refused(guard, "http://10.2.0.1/hook")
        self.refused(guard, "http://[::1]:9000/")
        message = self.refused(guard, "http://127.0.0.1:8080/hook")
        self.assertIn("port 8080 is agi_app's HTTP API", message)
        self.refused(guard, "http://127.0.0.2:8080/")
        self.refused(guard, "http://localhost:8080/")
        self.assertIsNone(guard.refusal(ip("8.8.8.8"), 8080))  # not this host

    def test_own_targets_are_refused_on_their_address(self):
        guard = TargetGuard(["10.0.0.0/8"], own_targets=[(ip("10.0.0.9"), 5038, "the AMI")])
        self.refused(guard, "http://10.0.0.9:5038/")
        guard.check_url("http://10.0.0.9:80/")

    def test_from_config(self):
        config = load(
            None,
            environ={
                "AGI_APP_EVENTS_ALLOWED_NETWORKS": "127.0.0.0/8",
                "AGI_APP_HTTP_LISTEN": "tcp:18080:interface=127.0.0.1",
                "AGI_APP_AGI_LISTEN": "tcp:14573:interface=127.0.0.1",
                "AGI_APP_WEBSOCKET_LISTEN": "tcp:port=20150:interface=127.0.0.1",
                "AGI_APP_AMI_HOST": "192.0.2.10",
            },
        )
        guard = TargetGuard.from_config(config)
        self.assertEqual([str(n) for n in guard.allowed.networks], ["127.0.0.0/8"])
        self.assertEqual(sorted(guard.own_ports), [14573, 18080, 20150])
        self.assertEqual(list(guard.own_targets), [(ip("192.0.2.10"), 5038)])
        for port in (14573, 18080, 20150):
            self.refused(guard, f"http://127.0.0.1:{port}/")
        guard.check_url("http://127.0.0.1:18081/")
        local_ami = TargetGuard.from_config(load(None, environ={"AGI_APP_AMI_HOST": "localhost"}))
        self.assertIn(5038, local_ami.own_ports)


class _Nothing(Protocol):
    pass


class EndpointTests(SynchronousTestCase):
    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.resolver = LoopbackResolver(
            {"rebind.test": ["127.0.0.1"], "both.test": ["::1", "127.0.0.1"]}
        )
        self.factory = Factory.forProtocol(_Nothing)

    def endpoint(self, host: str, guard: TargetGuard, port: int = 9000) -> GuardedEndpoint:
        return GuardedEndpoint(self.reactor, host, port, guard, resolver=self.resolver, timeout=3)

    def test_a_name_resolving_to_loopback_is_refused_before_connecting(self):
        d = self.endpoint("rebind.test", TargetGuard()).connect(self.factory)
        failure = self.failureResultOf(d, ForbiddenTarget)
        self.assertEqual(
            failure.value.message,
            "url: rebind.test resolves to 127.0.0.1, a loopback address "
            "(allowed: public addresses and [events] allowed_networks)",
        )
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(self.resolver.lookups, ["rebind.test"])

    def test_numeric_spellings_are_read_without_a_lookup(self):
        for host in ("2130706433", "0x7f000001", "127.1", "0177.0.0.1", "::ffff:127.0.0.1"):
            self.failureResultOf(
                self.endpoint(host, TargetGuard()).connect(self.factory), ForbiddenTarget
            )
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(self.resolver.lookups, [])

    def test_a_mangled_host_is_refused(self):
        # what twisted.web makes of http://name@127.0.0.1/ (user info in the host)
        d = self.endpoint("name@127.0.0.1", TargetGuard(["127.0.0.0/8"])).connect(self.factory)
        self.failureResultOf(d, ForbiddenTarget)
        self.assertEqual((self.reactor.tcpClients, self.resolver.lookups), ([], []))

    def test_allowed_addresses_are_connected_to_and_only_those(self):
        guard = TargetGuard(["127.0.0.0/8"])
        d = self.endpoint("both.test", guard).connect(self.factory)
        self.assertNoResult(d)
        [(host, port, _factory, timeout, _bind)] = self.reactor.tcpClients
        self.assertEqual((host, port, timeout), ("127.0.0.1", 9000, 3))

    def test_own_port_is_refused_even_when_allowed(self):
        guard = TargetGuard(["127.0.0.0/8", "::1/128"], own_ports=[(9000, "agi_app's HTTP API")])
        self.failureResultOf(self.endpoint("both.test", guard).connect(self.factory),
                             ForbiddenTarget)  # fmt: skip
        self.assertEqual(self.reactor.tcpClients, [])

    def test_unknown_name(self):
        d = self.endpoint("nowhere.test", TargetGuard()).connect(self.factory)
        self.failureResultOf(d, DNSLookupError)
        self.assertEqual(self.reactor.tcpClients, [])

    def test_cancel_while_resolving(self):
        class Slow:
            def resolveHostName(self, receiver, name, portNumber=0, **kw):
                self.receiver = receiver

        slow = Slow()
        endpoint = GuardedEndpoint(self.reactor, "slow.test", 80, TargetGuard(), resolver=slow)
        d = endpoint.connect(self.factory)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        slow.receiver.resolutionComplete()  # late: ignored
        self.assertEqual(self.reactor.tcpClients, [])

    def test_factory_wraps_https_in_tls_for_the_named_host(self):
        factory = GuardedEndpointFactory(self.reactor, TargetGuard(), resolver=self.resolver)
        plain = factory.endpointForURI(URI.fromBytes(b"http://rebind.test:81/x"))
        self.assertIsInstance(plain, GuardedEndpoint)
        tls = factory.endpointForURI(URI.fromBytes(b"https://rebind.test/x"))
        self.assertIsInstance(tls._wrappedEndpoint, GuardedEndpoint)
        d: Deferred = tls.connect(self.factory)
        self.failureResultOf(d, ForbiddenTarget)
        self.assertEqual(self.reactor.tcpClients, [])


def test_loopback_resolver_never_knows_other_addresses():
    with pytest.raises(ValueError):
        LoopbackResolver({"x.test": ["127.0.0.1", "10.0.0.1"]})
