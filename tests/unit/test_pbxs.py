"""Several PBXs (agi_app.pbxs): which PBX an extension, a call and a FastAGI
session belong to, each PBX on a fake AMI server of its own (real AMI bytes)
and the real store in memory."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from agi_app.agi import ScriptRegistry
from agi_app.ami.testing import FakeAMIServer
from agi_app.calls.service import CallRequest
from agi_app.config import load
from agi_app.errors import InvalidInput, PBXUnavailable
from agi_app.inbound import CRMLookup
from agi_app.live.control import CallNotFound
from agi_app.pbxs import (
    PBX,
    SESSION_WAIT,
    PBXCalls,
    PBXControl,
    PBXDirectory,
    UnknownSession,
    route_scripts,
    transferred,
)
from agi_app.store.testing import MemoryStore, fired

CONF = """
[ami]
port = 5038
secret = secret
[ami:east]
port = 5039
secret = secret
extensions = 3*
"""


@dataclass
class Session:
    """What a script reads of a FastAGI session."""

    env: dict[str, str]
    args: list[str] = field(default_factory=list)


class TwoPBXs:
    def __init__(self, tmp_path: Path):
        path = tmp_path / "agi_app.conf"
        path.write_text(CONF + f"[ivr]\npath = {tmp_path / 'none.conf'}\n", encoding="utf-8")
        self.config = load(path, environ={})
        self.clock = MemoryReactorClock()
        self.store = MemoryStore(self.clock)
        lookup = CRMLookup.from_config(self.config, self.clock)
        self.directory = PBXDirectory(
            [PBX(name, section, self.config, store=self.store, reactor=self.clock, lookup=lookup,
                 on_transfer=transferred) for name, section in self.config.pbxs.items()],
            store=self.store, clock=self.clock,
        )  # fmt: skip
        self.fakes = {
            "default": FakeAMIServer(users={"agi_app": "secret"}, clock=self.clock, port=5038),
            "east": FakeAMIServer(users={"agi_app": "secret"}, clock=self.clock, port=5039),
        }
        self.fakes["default"].device_states = {
            "PJSIP/1000": "NOT_INUSE", "PJSIP/2000": "UNAVAILABLE", "PJSIP/1500": "INUSE",
        }
        self.fakes["east"].device_states = {
            "PJSIP/2000": "NOT_INUSE", "PJSIP/1000": "UNAVAILABLE", "PJSIP/1500": "NOT_INUSE",
            "PJSIP/2500": "UNAVAILABLE",
        }
        self.fakes["east"].add_channel("PJSIP/2000-00000001", uniqueid="1700000000.7")
        self.fakes["default"].add_channel("PJSIP/1000-00000001", uniqueid="1700000000.7")
        self.links = {}
        for pbx in self.directory:
            pbx.start()
            self.links[pbx.name] = self.fakes[pbx.name].accept(self.clock)
        assert all(p.ami.connected for p in self.directory)

    def pbx(self, name: str) -> PBX:
        return self.directory.pbxs[name]

    def stop(self) -> None:
        for pbx in self.directory:
            pbx.lifecycle.stop()
            pbx.operators.stop()
            pbx.tracker.stop()
            pbx.ami.stopService()
        fired(self.store.close())


@pytest.fixture
def two(tmp_path: Path):
    bed = TwoPBXs(tmp_path)
    yield bed
    bed.stop()


def call_to(sip: str, **over) -> CallRequest:
    return CallRequest(kind="makeCall", first=sip, phone="380639920000", trunk="pstn", **over)


# -- the PBX of an extension ----------------------------------------------------


def test_an_extension_goes_to_the_pbx_it_is_registered_on(two: TwoPBXs):
    of = two.directory.of_extension
    assert of("1000").name == "default"
    assert of("2000").name == "east"
    # registered on both: the first in the file
    assert of("1500").name == "default"
    # registered nowhere: the PBX whose extensions key names it
    assert of("3001").name == "east"
    # known (not registered) on one PBX only, not configured: that PBX
    assert of("2500").name == "east"
    # unknown everywhere: the default PBX
    assert of("9999").name == "default"


def test_a_pbx_that_went_down_keeps_its_extensions(two: TwoPBXs):
    assert two.directory.of_extension("2000").name == "east"
    east = two.pbx("east")
    two.links["east"].drop()
    east.ami.device_states.clear()  # whatever the link forgets while down
    assert not east.ami.connected
    assert two.directory.of_extension("2000").name == "east"


@pytest_twisted.ensureDeferred
async def test_calls_are_placed_on_the_extensions_pbx_or_the_one_asked_for(two: TwoPBXs):
    calls = PBXCalls(two.directory)
    first, _ = await calls.place(call_to("2000"))
    asked, _ = await calls.place(call_to("1500"), pbx="east")
    plain, _ = await calls.place(call_to("1500"))
    # the east PBX's device state counts for a call placed there
    offline, _ = await calls.place(call_to("1000"), pbx="east")
    assert [two.store.call(c)["pbx"] for c in (first, asked, plain, offline)] == [
        "east", "east", "default", "east",
    ]
    assert two.store.call(offline)["final_status"] == "OPERATOR_OFFLINE"
    originated = {n: [a.get("Channel") for a in f.actions_named("Originate")]
                  for n, f in two.fakes.items()}  # fmt: skip
    assert originated == {"default": ["PJSIP/1500"], "east": ["PJSIP/2000", "PJSIP/1500"]}
    assert {e["pbx"] for e in fired(two.store.statuses(first))} == {"east"}


@pytest_twisted.ensureDeferred
async def test_an_unknown_pbx_is_refused_before_anything_is_stored(two: TwoPBXs):
    calls = PBXCalls(two.directory)
    for name, code in (("west", "unknown_pbx"), ("East", "invalid_pbx")):
        with pytest.raises(InvalidInput) as e:
            await calls.place(call_to("1000"), pbx=name)
        assert (e.value.field, e.value.code) == ("pbx", code)
    assert fired(two.store.history_after(0, 10)) == []
    # a single PBX's call service refuses another name the same way
    with pytest.raises(InvalidInput) as e:
        await two.pbx("default").calls.place(call_to("1000"), pbx="east")
    assert e.value.code == "unknown_pbx"


@pytest_twisted.ensureDeferred
async def test_a_pbx_that_is_down_answers_503_for_its_extensions_only(two: TwoPBXs):
    calls = PBXCalls(two.directory)
    assert two.directory.of_extension("2000").name == "east"
    two.links["east"].drop()
    with pytest.raises(PBXUnavailable) as e:
        await calls.place(call_to("2000"))
    row = two.store.call(e.value.call_id)
    assert (row["pbx"], row["final_status"]) == ("east", "ERROR")
    other, _ = await calls.place(call_to("1000"))
    assert two.store.call(other)["final_status"] is None
    assert len(two.fakes["default"].actions_named("Originate")) == 1


# -- the PBX of a call and of a FastAGI session --------------------------------


@pytest_twisted.ensureDeferred
async def test_a_call_belongs_to_the_pbx_that_placed_it(two: TwoPBXs):
    calls = PBXCalls(two.directory)
    call_id, _ = await calls.place(call_to("2000"))
    assert (await two.directory.of_call(call_id)).name == "east"
    assert await two.directory.of_call("nope") is None
    control = PBXControl(two.directory)
    with pytest.raises(CallNotFound):
        await control.hangup_call("nope")
    with pytest.raises(InvalidInput):
        await control.hangup_call("bad id!")


@pytest_twisted.ensureDeferred
async def test_a_session_belongs_to_the_pbx_its_channel_is_on(two: TwoPBXs):
    of = two.directory.of_session
    east = Session({"agi_uniqueid": "1700000000.7", "agi_channel": "PJSIP/2000-00000001"})
    default = Session({"agi_uniqueid": "1700000000.7", "agi_channel": "PJSIP/1000-00000001"})
    assert (await of(east, "ivr_incoming")).name == "east"
    assert (await of(default, "ivr_incoming")).name == "default"


@pytest_twisted.ensureDeferred
async def test_a_session_no_pbx_has_is_refused_after_a_short_wait(two: TwoPBXs):
    spoofed = Session({"agi_uniqueid": "1700000000.7", "agi_channel": "PJSIP/2000-00000009"})
    d = defer.ensureDeferred(two.directory.of_session(spoofed, "inbound"))
    assert not d.called
    two.clock.advance(SESSION_WAIT)
    with pytest.raises(UnknownSession):
        fired(d)


@pytest_twisted.ensureDeferred
async def test_a_session_that_shows_up_late_is_taken(two: TwoPBXs):
    late = Session({"agi_uniqueid": "1700000000.99", "agi_channel": "PJSIP/2000-00000002"})
    d = defer.ensureDeferred(two.directory.of_session(late, "inbound"))
    assert not d.called
    two.fakes["east"].emit("Newchannel", Channel="PJSIP/2000-00000002",
                           Uniqueid="1700000000.99", ChannelState="4")  # fmt: skip
    assert fired(d).name == "east"


@pytest_twisted.ensureDeferred
async def test_a_call_script_runs_only_on_the_calls_own_pbx(two: TwoPBXs):
    calls = PBXCalls(two.directory)
    call_id, _ = await calls.place(call_to("1000"))  # on default
    # a session on east naming the default PBX's call is not taken
    claim = Session({"agi_uniqueid": "1700000000.7", "agi_channel": "PJSIP/2000-00000001"},
                    [call_id])  # fmt: skip
    d = defer.ensureDeferred(two.directory.of_session(claim, "operator_call"))
    two.clock.advance(SESSION_WAIT)
    with pytest.raises(UnknownSession):
        fired(d)
    own = Session({"agi_uniqueid": "1700000000.7", "agi_channel": "PJSIP/1000-00000001"},
                  [call_id])  # fmt: skip
    assert (await two.directory.of_session(own, "operator_call")).name == "default"


def test_every_pbxs_scripts_are_served_by_one_registry(two: TwoPBXs):
    registry = ScriptRegistry()
    route_scripts(two.directory, registry)
    assert set(registry.names()) == set(two.pbx("east").scripts.names())
    assert {"operator_call", "ivr_incoming", "inbound", "announcement"} <= set(registry.names())
