"""Reading back the SIP messages a sandbox phone kept (SIPp ``-trace_msg``):
the file's layout as SIPp 3.6 writes it, and the phone's INVITEs from it."""

from __future__ import annotations

from pathlib import Path

from agi_app.sandbox import scenarios
from agi_app.sandbox.pbx import PBX
from agi_app.sandbox.pbx_config import PROFILES
from agi_app.sandbox.phones import Phone, header_values, parse_messages

INVITE = (
    "INVITE sip:1000@127.0.0.1:25071 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:25060;rport;branch=z9hG4bKPj1\r\n"
    'From: "380639920000" <sip:380639920000@127.0.0.1>;tag=abc\r\n'
    "To: <sip:1000@127.0.0.1>\r\n"
    "Call-ID: call-1\r\n"
    "CSeq: 17037 INVITE\r\n"
    "Alert-Info: info=alert-autoanswer\r\n"
    "Call-Info: <sip:127.0.0.1>;answer-after=0\r\n"
    "X-Folded: first\r\n"
    "  second\r\n"
    "Content-Type: application/sdp\r\n"
    "Content-Length:   10\r\n"
    "\r\n"
    "v=0\r\n"
    "s=-\r\n"
)
RINGING = (
    "SIP/2.0 180 Ringing\r\n"
    "To: <sip:1000@127.0.0.1>;tag=507SIPpTag01\r\n"
    "Call-ID: call-1\r\n"
    "Content-Length: 0\r\n"
    "\r\n"
)
REINVITE = INVITE.replace("To: <sip:1000@127.0.0.1>", "To: <sip:1000@127.0.0.1>;tag=x")


def block(when: str, direction: str, message: str) -> str:
    head = (f"UDP message received [{len(message)}] bytes :" if direction == "received"
            else f"UDP message sent ({len(message)} bytes):")  # fmt: skip
    return f"----------------------------------------------- {when}\n{head}\n\n{message}\n"


FILE = (
    block("2026-12-06 23:47:14.603488", "received", INVITE)
    + block("2026-12-06 23:47:14.603825", "sent", RINGING)
    + block("2026-12-06 23:47:15.000000", "received", REINVITE)
)


def test_each_message_with_its_direction_start_line_headers_and_body():
    first, second, third = parse_messages(FILE)
    assert (first["direction"], first["start_line"]) == (
        "received", "INVITE sip:1000@127.0.0.1:25071 SIP/2.0")
    assert header_values(first, "call-info") == ["<sip:127.0.0.1>;answer-after=0"]
    assert header_values(first, "Alert-Info") == ["info=alert-autoanswer"]
    assert header_values(first, "X-Folded") == ["first second"]
    assert header_values(first, "Missing") == []
    assert first["body"] == "v=0\ns=-"
    assert (second["direction"], second["start_line"]) == ("sent", "SIP/2.0 180 Ringing")
    assert second["body"] == ""
    assert abs(third["time"] - first["time"] - 0.396512) < 1e-6


def test_a_message_still_being_written_waits():
    partial = block("2026-12-06 23:47:14.603488", "received", INVITE)
    cut = partial[: partial.index("Content-Type")]
    assert parse_messages(cut) == []
    assert len(parse_messages(partial)) == 1
    assert parse_messages("") == []


def test_the_phone_lists_the_invites_that_started_calls(tmp_path: Path):
    pbx = PBX(tmp_path, PROFILES["test"])
    phone = Phone("1000", pbx, 25071, 26000, folder=tmp_path / "phone", trace_sip=True)
    messages = tmp_path / "uas-1.messages"
    messages.write_text(FILE)
    phone._message_files.append((messages, 0))
    [invite] = phone.invites()
    assert invite["call_id"] == "call-1"
    assert header_values(invite, "Call-Info") == ["<sip:127.0.0.1>;answer-after=0"]
    phone.clear()
    assert phone.invites() == []
    with messages.open("a") as fh:
        second = INVITE.replace("call-1", "call-2")
        fh.write(block("2026-12-06 23:48:00.000000", "received", second))
    assert [i["call_id"] for i in phone.invites()] == ["call-2"]


def test_the_message_file_is_on_the_command_line_only_when_asked(tmp_path: Path):
    args = (tmp_path / "uas.xml", 25071, 26000, tmp_path / "uas.log", tmp_path / "e")
    assert "-trace_msg" not in scenarios.uas_argv(*args)
    argv = scenarios.uas_argv(*args, messages=tmp_path / "m")
    assert argv[-3:] == ["-trace_msg", "-message_file", str(tmp_path / "m")]
