"""The sandbox phones take a caller's retransmitted INVITE as part of the
call, as a real phone does, instead of dropping the call.

Under load the PBX's 1xx/200 can arrive late, so the PBX sends its INVITE
again; the phone (a rendered SIPp UAS scenario) may get that copy after it
has answered, while it waits for the ACK.  Here SIPp runs the rendered
scenario on 127.0.0.1 and a plain UDP socket plays the PBX, so the copy
always comes at that moment, without load and without Asterisk: the phone
must answer it with its 200 again (same To tag: the 200's own
retransmissions, which run until the ACK), then take the ACK and the BYE,
and its log must show one call, answered once, ended by the BYE.

An INVITE sent again while the phone rings, or before the ACK of its
rejection, is answered by SIPp's own retransmission detection (the first
answer it sent after the INVITE, again); those tests keep it that way.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agi_app.sandbox import _util
from agi_app.sandbox import scenarios as sc
from agi_app.sandbox.phones import parse_log

HOST = "127.0.0.1"
#: how long a test waits for one answer of the phone (a loaded machine is slow)
WAIT = 5.0
NUMBER = "380441234567"
#: the media port the phone's answer offers (nothing is sent to it here)
PHONE_AUDIO = 26000


def _free_udp_port(block: int = 1) -> int:
    """A UDP port on 127.0.0.1 nobody holds now, with the ``block - 1``
    ports after it free too (SIPp's media sockets take four from ``-mp``)."""
    while True:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((HOST, 0))
        port = s.getsockname()[1]
        s.close()
        if not any(_util.port_in_use(port + i, socket.SOCK_DGRAM) for i in range(1, block)):
            return port


@dataclass
class Uas:
    """A SIPp UAS running a rendered scenario on ``127.0.0.1:port``."""

    proc: subprocess.Popen
    port: int
    log: Path
    errors: Path

    def events(self) -> list[str]:
        """The event names of the scenario's log lines, in order."""
        return [line.split("|", 1)[0] for line in self.log.read_text().splitlines() if "|" in line]

    def wait_for(self, event: str) -> None:
        """Block until the scenario has logged ``event``."""
        _util.poll_blocking(lambda: event in self.events(), WAIT,
                            describe=lambda: f"{event} in {self.log}: {self.events()}")  # fmt: skip

    def aborts(self) -> str:
        """What SIPp wrote about calls it aborted ("" when none)."""
        text = self.errors.read_text() if self.errors.exists() else ""
        return "\n".join(line for line in text.splitlines() if "Aborting call" in line)


@pytest.fixture
def start_uas(tmp_path: Path) -> Iterator:
    """``start_uas(xml)`` runs SIPp with the scenario ``xml`` as the sandbox
    runs its phones (same command line); stopped after the test."""
    if not os.path.exists(sc.SIPP):
        reason = f"SIPp not installed ({sc.SIPP})"
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    started: list[subprocess.Popen] = []

    def start(xml: str) -> Uas:
        scenario = tmp_path / "uas.xml"
        scenario.write_text(xml)
        log, errors = tmp_path / "uas.log", tmp_path / "uas.errors"
        log.touch()
        # the ports are free when picked but may be taken before SIPp binds
        # them (other test runs on the machine): then pick others
        for _ in range(5):
            port, media_port = _free_udp_port(), _free_udp_port(block=4)
            argv = sc.uas_argv(scenario, port, media_port, log, errors)
            with open(tmp_path / "uas.stderr", "wb") as stderr:
                proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                    start_new_session=True, cwd=tmp_path,
                )  # fmt: skip
            started.append(proc)
            _util.poll_blocking(
                lambda p=proc, n=port: (
                    p.poll() is not None or _util.port_in_use(n, socket.SOCK_DGRAM)
                ),
                WAIT,
                describe=lambda n=port: f"SIPp listening on {HOST}:{n}",
            )
            why = (tmp_path / "uas.stderr").read_text()
            if proc.poll() is None or "errno = 98" not in why:
                break
        assert proc.poll() is None, why
        return Uas(proc, port, log, errors)

    yield start
    for proc in started:
        if proc.poll() is None:
            _util.terminate(proc.pid, timeout=1.0)
        proc.wait(timeout=5)


def _header(message: str, name: str) -> str:
    m = re.search(rf"^{name}:\s*(.*?)\r?$", message, re.MULTILINE | re.IGNORECASE)
    return m.group(1) if m else ""


def _tag(message: str, name: str) -> str:
    m = re.search(r";\s*tag=([^;>\s]+)", _header(message, name))
    return m.group(1) if m else ""


class Pbx:
    """The PBX's side of one call, over a UDP socket on 127.0.0.1: an
    INVITE (sent again at will, byte for byte), the ACK and the BYE."""

    def __init__(self, phone_port: int) -> None:
        self.phone = (HOST, phone_port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.sock.settimeout(WAIT)
        # where the phone sends its audio (see wait_for_audio)
        self.media = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.media.bind((HOST, 0))
        self.port = self.sock.getsockname()[1]
        self.call_id = f"retrans-{self.port}@{HOST}"
        self.uri = f"sip:{NUMBER}@{HOST}:{phone_port}"
        body = (
            f"v=0\r\no=pbx 1 1 IN IP4 {HOST}\r\ns=-\r\nc=IN IP4 {HOST}\r\nt=0 0\r\n"
            f"m=audio {self.media.getsockname()[1]} RTP/AVP 8 101\r\n"
            "a=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
        )
        self.invite = self._request(
            "INVITE", self.uri, 1, "z9hG4bK-invite", f"<{self.uri}>",
            f"Contact: <sip:pbx@{HOST}:{self.port}>\r\nContent-Type: application/sdp\r\n", body,
        ).encode()  # fmt: skip

    def _request(
        self, method: str, uri: str, cseq: int, branch: str, to: str, extra: str = "",
        body: str = "",
    ) -> str:  # fmt: skip
        return (
            f"{method} {uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {HOST}:{self.port};rport;branch={branch}\r\n"
            f"From: <sip:pbx@{HOST}>;tag=pbx-tag\r\nTo: {to}\r\n"
            f"Call-ID: {self.call_id}\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\n"
            f"{extra}Content-Length: {len(body)}\r\n\r\n{body}"
        )

    def send_invite(self) -> None:
        """The INVITE, the same bytes every time (a retransmission)."""
        self.sock.sendto(self.invite, self.phone)

    def response(self, code: int, method: str = "INVITE") -> str:
        """The next response ``code`` to ``method``, skipping others (a
        180 or the 200's retransmissions); AssertionError after WAIT s."""
        while True:
            try:
                data, _ = self.sock.recvfrom(65535)
            except TimeoutError:
                raise AssertionError(f"no {code} to the {method} within {WAIT} s") from None
            text = data.decode()
            if text.startswith(f"SIP/2.0 {code} ") and _header(text, "CSeq").endswith(method):
                return text

    def _in_dialog(self, method: str, cseq: int, answer: str) -> None:
        to = _header(answer, "To")
        target = re.search(r"<([^>]+)>", _header(answer, "Contact")).group(1)
        request = self._request(method, target, cseq, f"z9hG4bK-{method.lower()}", to)
        self.sock.sendto(request.encode(), self.phone)

    def ack(self, answer: str) -> None:
        """ACK the 200 ``answer``."""
        self._in_dialog("ACK", 1, answer)

    def ack_rejection(self, rejection: str) -> None:
        """ACK the final error ``rejection`` (the INVITE's transaction)."""
        to = _header(rejection, "To")
        request = self._request("ACK", self.uri, 1, "z9hG4bK-invite", to)
        self.sock.sendto(request.encode(), self.phone)

    def bye(self, answer: str) -> str:
        """Hang up the call the 200 ``answer`` set up; the phone's 200."""
        self._in_dialog("BYE", 2, answer)
        return self.response(200, "BYE")

    def wait_for_audio(self) -> None:
        """Block until the phone's audio reaches the PBX's media port."""
        self.media.settimeout(WAIT)
        try:
            self.media.recvfrom(65535)
        except TimeoutError:
            raise AssertionError(f"no audio from the phone within {WAIT} s") from None

    def close(self) -> None:
        self.sock.close()
        self.media.close()


@pytest.fixture
def pbx() -> Iterator:
    made: list[Pbx] = []

    def make(phone_port: int) -> Pbx:
        made.append(Pbx(phone_port))
        return made[-1]

    yield make
    for p in made:
        p.close()


#: each answering scenario and what it does last before it waits for the
#: BYE: a log line, or AUDIO (it starts playing speech).  SIPp takes a BYE
#: only once it waits for one, so the test sends it then.
AUDIO = "audio"
SCENARIOS = {
    "answer at once": (lambda: sc.uas_scenario(sc.answer(), PHONE_AUDIO, title="t"), AUDIO),
    "ring, then answer": (
        lambda: sc.uas_scenario(sc.answer(after=0.3), PHONE_AUDIO, title="t"),
        AUDIO,
    ),
    "answer, then DTMF": (
        lambda: sc.uas_scenario(sc.dtmf("5", after=0.2), PHONE_AUDIO, title="t"),
        "DTMF",
    ),
    # a PSTN with a rule: the answering branch is not the first one
    "the PSTN's rule for a number": (
        lambda: sc.pstn_scenario(sc.busy(), {"+" + NUMBER: sc.answer(after=0.3)}, PHONE_AUDIO),
        AUDIO,
    ),
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_an_invite_sent_again_before_the_ack_gets_the_200_again(scenario, start_uas, pbx):
    render, before_bye = SCENARIOS[scenario]
    uas = start_uas(render())
    call = pbx(uas.port)
    call.send_invite()
    ringing = call.response(180)
    tag = _tag(ringing, "To")
    assert tag
    answer = call.response(200)
    assert _tag(answer, "To") == tag

    # the PBX did not get the 200 in time: its INVITE comes again
    call.send_invite()
    again = call.response(200)
    assert _tag(again, "To") == tag
    assert _header(again, "CSeq") == "1 INVITE"
    assert uas.aborts() == ""

    call.ack(again)
    if before_bye == AUDIO:
        call.wait_for_audio()
    else:
        uas.wait_for(before_bye)
    bye_answer = call.bye(again)
    assert _tag(bye_answer, "To") == tag

    def ended() -> list:
        calls = parse_log(uas.log.read_text())
        return calls if calls and calls[-1]["end"] else []

    calls = _util.poll_blocking(ended, WAIT, describe=lambda: f"the call's end in {uas.log}")
    assert [(c["call_id"], c["end"]) for c in calls] == [(call.call_id, "bye_received")]
    assert calls[0]["answer_time"] is not None
    # one call, answered once: the INVITE sent again wrote no line
    events = uas.events()
    assert events.count("INVITE") == 1, events
    assert events.count("ANSWERED") == 1, events
    assert uas.aborts() == ""
    assert uas.proc.poll() is None


def test_an_invite_sent_again_while_ringing_gets_the_180_again(start_uas, pbx):
    # rings 2 s: time enough for the INVITE to come again before the answer
    uas = start_uas(sc.uas_scenario(sc.answer(after=2.0), PHONE_AUDIO, title="t"))
    call = pbx(uas.port)
    call.send_invite()
    tag = _tag(call.response(180), "To")

    call.send_invite()
    assert _tag(call.response(180), "To") == tag
    answer = call.response(200)
    assert _tag(answer, "To") == tag
    call.ack(answer)
    call.wait_for_audio()
    call.bye(answer)
    calls = _util.poll_blocking(
        lambda: [c for c in parse_log(uas.log.read_text()) if c["end"]], WAIT
    )
    assert [c["end"] for c in calls] == ["bye_received"]
    assert uas.events().count("RINGING") == 1
    assert uas.aborts() == ""


def test_an_invite_sent_again_before_the_ack_of_a_rejection_gets_it_again(start_uas, pbx):
    uas = start_uas(sc.uas_scenario(sc.busy(), PHONE_AUDIO, title="t"))
    call = pbx(uas.port)
    call.send_invite()
    tag = _tag(call.response(486), "To")

    call.send_invite()
    busy = call.response(486)
    assert _tag(busy, "To") == tag
    call.ack_rejection(busy)
    uas.wait_for("REJECTED")
    assert [(c["end"], c["code"]) for c in parse_log(uas.log.read_text())] == [("rejected", 486)]
    assert uas.aborts() == ""
