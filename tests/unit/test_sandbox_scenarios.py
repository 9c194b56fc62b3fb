"""The sandbox phones' SIPp scenarios, rendered without running SIPp: each
behaviour becomes XML that parses, whose jumps all land on a label, and
that sends the responses, waits the pauses and plays the DTMF it should."""

from __future__ import annotations

import re
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from agi_app.sandbox import scenarios as sc
from agi_app.sandbox.scenarios import (
    Behaviour,
    Captures,
    answer,
    busy,
    decline,
    dtmf,
    make_behaviour,
    no_answer,
    reject,
)

AUDIO_PORT = 26004
#: a pcap file holding no packet at all: enough to re-number
EMPTY_PCAP = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
DIGIT_NAMES = {"*": "star", "#": "pound", **{d: d for d in "0123456789"}}


@pytest.fixture
def captures(tmp_path: Path) -> Captures:
    """Captures in a folder of the test's own (not the host's sip-tester)."""
    pcaps = tmp_path / "pcaps"
    pcaps.mkdir()
    (pcaps / "g711a.pcap").write_bytes(EMPTY_PCAP)
    for name in DIGIT_NAMES.values():
        (pcaps / f"dtmf_2833_{name}.pcap").write_bytes(EMPTY_PCAP)
    return Captures(pcaps=pcaps, cache=tmp_path / "cache")


class Scenario:
    """A rendered scenario, parsed: its steps in order and what they say."""

    def __init__(self, xml: str) -> None:
        self.xml = xml
        self.root = ET.fromstring(xml)
        self.steps = list(self.root)

    def sent(self) -> list[str]:
        """The first line of every message the phone sends."""
        return [s.text.strip().splitlines()[0] for s in self.steps if s.tag == "send"]

    def responses(self) -> list[int]:
        """The status codes of the responses the phone sends."""
        return [
            int(m.group(1)) for m in map(re.compile(r"^SIP/2.0 (\d{3}) ").match, self.sent()) if m
        ]

    def received(self) -> list[tuple[str, str | None]]:
        """(request or response, timeout in ms) of every ``<recv>``."""
        return [
            (s.get("request") or s.get("response"), s.get("timeout"))
            for s in self.steps
            if s.tag == "recv"
        ]

    def logs(self) -> list[str]:
        """The ``<log>`` lines the scenario writes, in order."""
        return [e.get("message") for e in self.root.iter("log")]

    def played(self) -> list[str]:
        """The pcap files played, in order."""
        return [e.get("play_pcap_audio") for e in self.root.iter("exec")]

    def labels(self) -> list[str]:
        return [s.get("id") for s in self.steps if s.tag == "label"]

    def jumps(self) -> set[str]:
        return {s.get(attr) for s in self.steps for attr in ("next", "ontimeout") if s.get(attr)}

    def sdp_port(self) -> int:
        return int(re.search(r"m=audio (\d+) ", self.xml).group(1))


def render(behaviour: Behaviour, captures: Captures) -> Scenario:
    return Scenario(sc.uas_scenario(behaviour, AUDIO_PORT, title="t", captures=captures))


def assert_well_formed(s: Scenario) -> None:
    """Labels unique, every jump lands on one, every variable the dialled
    number rules assign is referenced (SIPp refuses a scenario otherwise)."""
    assert len(s.labels()) == len(set(s.labels())), s.labels()
    assert s.jumps() <= set(s.labels()), s.jumps() - set(s.labels())
    [reference] = [x for x in s.steps if x.tag == "Reference"]
    referenced = set(reference.get("variables").split(","))
    assigned = {name for e in s.root.iter("ereg") for name in e.get("assign_to").split(",")}
    assert assigned <= referenced, assigned - referenced
    # the first step takes the INVITE and writes it down
    assert (s.steps[0].tag, s.steps[0].get("request")) == ("recv", "INVITE")
    assert s.logs()[0].startswith("INVITE|")


BEHAVIOURS = [
    answer(),
    answer(after=0.5, hangup_after=2),
    answer(after=0, hangup_after=0),
    busy(),
    decline(),
    reject(480),
    reject(499),
    no_answer(),
    dtmf("9#*1", after=1.0, gap=0.2, hangup_after=3),
    dtmf("0", answer_after=1.5),
]


@pytest.mark.parametrize("behaviour", BEHAVIOURS, ids=Behaviour.describe)
def test_every_behaviour_renders_a_well_formed_scenario(behaviour, captures):
    s = render(behaviour, captures)
    assert_well_formed(s)
    assert s.root.get("name") == "agi_app sandbox: t"


def test_answer_at_once_and_talk_until_the_other_side_hangs_up(captures):
    s = render(answer(), captures)
    assert s.responses() == [180, 200, 200]  # ringing, the answer, the BYE's 200
    assert s.sdp_port() == AUDIO_PORT
    # no pause before answering: nothing waits for a CANCEL; the second
    # INVITE is the caller's retransmission, taken while waiting for the ACK
    assert s.received() == [("INVITE", None), ("INVITE", None), ("ACK", None), ("BYE", None)]
    assert [m.split("|")[0] for m in s.logs()] == ["INVITE", "RINGING", "ANSWERED", "BYE_RECEIVED"]
    assert s.played() == [str(captures.speech)]


def test_answer_after_a_pause_then_hang_up(captures):
    s = render(answer(after=0.5, hangup_after=2), captures)
    # rings 500 ms (a CANCEL in that time ends it), answers, BYE after 2000 ms
    assert ("CANCEL", "500") in s.received()
    assert ("BYE", "2000") in s.received()
    assert 487 in s.responses()  # the answer to a CANCEL while ringing
    assert "BYE [$remote_contact] SIP/2.0" in s.sent()
    assert [m.split("|")[0] for m in s.logs()] == [
        "INVITE", "RINGING", "CANCEL", "ANSWERED", "BYE_SENT", "BYE_RECEIVED",
    ]  # fmt: skip


def _shape(step: ET.Element) -> tuple:
    has_action = step.find("action") is not None
    return (step.tag, step.get("request"), step.get("optional"), step.get("next"), has_action)


def answers_and_what_follows(s: Scenario) -> list[list[tuple]]:
    """For every answer (200 with SDP) of the scenario, the two steps after
    it: (tag, request, optional, next, has an action)."""
    found = []
    for i, step in enumerate(s.steps):
        text = (step.text or "").strip()
        if step.tag == "send" and text.startswith("SIP/2.0 200 OK") and "application/sdp" in text:
            assert step.get("retrans")  # SIPp repeats it until the ACK
            found.append([_shape(x) for x in s.steps[i + 1 : i + 3]])
    return found


#: right after the 200: the caller's INVITE sent again (its 1xx/200 came
#: late) is taken without a jump and without a log line, then the ACK
TAKES_THE_INVITE_AGAIN = [
    ("recv", "INVITE", "true", None, False),
    ("recv", "ACK", None, None, False),
]


@pytest.mark.parametrize(
    "behaviour", [b for b in BEHAVIOURS if b.kind == "answer"], ids=Behaviour.describe
)
def test_the_invite_sent_again_before_the_ack_is_taken_as_the_same_call(behaviour, captures):
    # SIPp drops a call on an unexpected message, and sends nothing new
    # while the 200's retransmissions run (they are what answers the INVITE)
    assert answers_and_what_follows(render(behaviour, captures)) == [TAKES_THE_INVITE_AGAIN]


def test_every_answering_branch_of_the_pstn_takes_the_invite_sent_again(captures):
    xml = sc.pstn_scenario(
        answer(), {"5551001": answer(after=1), "5551002": dtmf("1"), "5551003": busy()},
        AUDIO_PORT, captures=captures,
    )  # fmt: skip
    assert answers_and_what_follows(Scenario(xml)) == [TAKES_THE_INVITE_AGAIN] * 3


def test_a_zero_pause_is_one_millisecond_not_no_timeout(captures):
    # SIPp reads timeout="0" as "wait for ever"
    s = render(answer(hangup_after=0), captures)
    assert ("BYE", "1") in s.received()


@pytest.mark.parametrize(
    ("behaviour", "line"),
    [
        (busy(), "SIP/2.0 486 Busy Here"),
        (decline(), "SIP/2.0 603 Decline"),
        (reject(480), "SIP/2.0 480 Temporarily Unavailable"),
        (reject(600), "SIP/2.0 600 Busy Everywhere"),
        (reject(499), "SIP/2.0 499 Nope"),
    ],
)
def test_a_rejection_sends_its_code_at_once_and_nothing_else(behaviour, line, captures):
    s = render(behaviour, captures)
    assert s.sent() == [line]
    assert s.received() == [("INVITE", None), ("ACK", None)]
    assert s.logs()[1:] == [f"REJECTED|[timestamp]|[call_id]|{behaviour.code}"]
    assert s.played() == []


def test_no_answer_rings_until_the_caller_cancels(captures):
    s = render(no_answer(), captures)
    assert s.responses() == [180, 200, 487]  # ringing, the CANCEL's 200, the INVITE's 487
    assert ("CANCEL", None) in s.received()
    assert not any("application/sdp" in x.text for x in s.steps if x.tag == "send")
    assert [m.split("|")[0] for m in s.logs()] == ["INVITE", "RINGING", "CANCEL"]


def test_dtmf_plays_each_key_in_order_with_its_pauses(captures):
    s = render(dtmf("9#*1", after=1.0, gap=0.2, hangup_after=3), captures)
    cache = captures.cache
    # each key its own capture, re-numbered for its place in the call; no speech
    assert s.played() == [
        str(cache / "v1-9-0.pcap"),
        str(cache / "v1-pound-1.pcap"),
        str(cache / "v1-star-2.pcap"),
        str(cache / "v1-1-3.pcap"),
    ]
    assert all(Path(p).exists() for p in s.played())
    # the first key 1000 ms after the answer, the others 200 ms apart, then
    # the hangup 3000 ms after the last; a BYE at any point ends it
    assert [t for r, t in s.received() if r == "BYE"] == ["1000", "200", "200", "200", "3000"]
    assert [m.rsplit("|", 1)[1] for m in s.logs() if m.startswith("DTMF|")] == list("9#*1")
    # the SDP offers telephone-event, which Asterisk needs to take RFC 2833 keys
    assert "a=rtpmap:101 telephone-event/8000" in s.xml


def test_the_pstn_answers_each_number_its_own_way(captures):
    rules = {
        "380639920001": busy(),
        "380639920002": dtmf("12"),
        "380639920003": busy(),
    }
    s = Scenario(sc.pstn_scenario(answer(), rules, AUDIO_PORT, captures=captures))
    assert_well_formed(s)
    assert s.root.get("name") == "agi_app sandbox: pstn"
    # numbers sharing a behaviour share a branch; every other number the default
    rule_regexps = [
        e.get("regexp") for e in s.root.iter("ereg") if re.fullmatch(r"r\d+", e.get("assign_to"))
    ]
    assert rule_regexps == [
        "^INVITE sip:[+]?(380639920001|380639920003)@",
        "^INVITE sip:[+]?(380639920002)@",
    ]
    dispatch = [(n.get("test"), n.get("next")) for n in s.steps if n.tag == "nop" and n.get("next")]
    assert dispatch[:3] == [("r0", "b0"), ("r1", "b1"), (None, "b2")]
    assert "SIP/2.0 486 Busy Here" in s.sent()
    assert len([p for p in s.played() if "dtmf" in p or "v1-" in p]) == 2
    assert str(captures.speech) in s.played()  # the default answers with speech


def test_a_number_with_a_plus_matches_with_or_without_it(captures):
    xml = sc.uas_scenario(
        answer(), AUDIO_PORT, rules=[(["+380501234567"], busy())], captures=captures
    )
    assert 'regexp="^INVITE sip:[+]?(380501234567)@"' in xml


@pytest.mark.parametrize("number", ["12", "38063992000112345", "380 63", "1000@evil", "", "+"])
def test_a_rule_for_something_not_a_number_is_refused(number, captures):
    with pytest.raises(ValueError, match="not a phone number"):
        sc.uas_scenario(answer(), AUDIO_PORT, rules=[([number], busy())], captures=captures)
    with pytest.raises(ValueError, match="not a phone number"):
        sc.phone_number(number)


def test_phone_number_drops_the_plus():
    assert sc.phone_number("+380501234567") == "380501234567"
    assert sc.phone_number("1000") == "1000"


@pytest.mark.parametrize(("expires", "online"), [(3600, True), (0, False)])
def test_register_brings_an_operator_online_and_expires_0_offline(expires, online):
    s = Scenario(sc.register_scenario("1003", 25074, expires))
    [request] = s.sent()
    assert request == "REGISTER sip:[remote_ip]:[remote_port] SIP/2.0"
    text = s.steps[0].text
    assert "Contact: <sip:1003@[local_ip]:25074>" in text
    assert f"Expires: {expires}" in text
    assert "To: <sip:1003@[remote_ip]:[remote_port]>" in text
    assert s.received() == [("200", None)]
    assert (expires > 0) is online


def test_register_refuses_a_negative_expiry():
    with pytest.raises(ValueError):
        sc.register_scenario("1000", 25071, -1)


def test_the_command_lines_bind_loopback_and_name_their_files(tmp_path):
    uas = sc.uas_argv(tmp_path / "uas.xml", 25071, 26000, tmp_path / "uas.log", tmp_path / "e")
    assert uas[0] == sc.SIPP
    assert uas[uas.index("-sf") + 1] == str(tmp_path / "uas.xml")
    assert (uas[uas.index("-i") + 1], uas[uas.index("-p") + 1]) == ("127.0.0.1", "25071")
    assert uas[uas.index("-mp") + 1] == "26000"
    assert uas[uas.index("-log_file") + 1] == str(tmp_path / "uas.log")
    assert "-trace_logs" in uas and "-bind_local" in uas
    reg = sc.register_argv(tmp_path / "r.xml", 25060, 25171, 26006, tmp_path / "r.errors")
    assert reg[1] == "127.0.0.1:25060"  # the PBX, on loopback
    assert (reg[reg.index("-p") + 1], reg[reg.index("-mp") + 1]) == ("25171", "26006")
    assert reg[reg.index("-m") + 1] == "1"  # one REGISTER, then exit
    assert "-timeout_error" in reg  # no answer is a failure, not a hang


# ------------------------------------------------------------------ behaviours


def test_make_behaviour_from_names_and_arguments():
    assert make_behaviour("busy") == busy()
    assert make_behaviour("decline") == decline()
    assert make_behaviour("no_answer") == no_answer()
    assert make_behaviour("reject", code=503) == reject(503)
    assert make_behaviour("answer", answer_after=0.5, hangup_after=2) == answer(0.5, 2)
    assert make_behaviour("dtmf", digits="12#") == dtmf("12#")
    assert make_behaviour(answer(), hangup_after=4) == answer(hangup_after=4)
    same = busy()
    assert make_behaviour(same) is same


def test_make_behaviour_refuses_an_unknown_name():
    with pytest.raises(ValueError, match="unknown behaviour 'ring'"):
        make_behaviour("ring")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "hold"}, "unknown behaviour"),
        ({"kind": "reject", "code": 200}, "4xx-6xx"),
        ({"kind": "reject", "code": 700}, "4xx-6xx"),
        ({"dtmf": "12A"}, "DTMF digits"),
        ({"answer_after": -1}, "answer_after"),
        ({"dtmf_gap": -0.1}, "dtmf_gap"),
        ({"hangup_after": -2}, "hangup_after"),
    ],
)
def test_a_behaviour_that_cannot_be_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Behaviour(**kwargs)


def test_descriptions():
    assert busy().describe() == "reject 486"
    assert no_answer().describe() == "ring, never answer"
    assert answer(1).describe() == "answer after 1 s, talk until the other side hangs up"
    assert dtmf("5", hangup_after=2).describe() == (
        "answer after 0 s, send DTMF 5, hang up after 2 s"
    )
