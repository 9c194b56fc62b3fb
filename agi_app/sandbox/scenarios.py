"""What a sandbox phone does, as SIPp scenarios and command lines.

A :class:`Behaviour` says how a phone treats an INVITE (answer after N s,
busy, decline, ring for ever, send DTMF, hang up after M s); this module
renders it into a SIPp UAS scenario from the fragments in ``sipp/``,
with one branch per behaviour when the PSTN answers each dialled number its
own way.  It also renders the REGISTER scenario that brings an operator
online (``Expires: 0`` takes it offline again), builds SIPp's command lines
and prepares the DTMF captures SIPp plays.

Nothing here starts a process or opens a socket: :mod:`agi_app.sandbox.phones`
runs what is rendered here and reads back the ``<log>`` lines every step of
a scenario writes (``EVENT|time|call-id|...``).
"""

from __future__ import annotations

import os
import re
import struct
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from agi_app.sandbox import _util

__all__ = [
    "DTMF_CACHE",
    "PCAPS",
    "SIPP",
    "Behaviour",
    "Captures",
    "answer",
    "busy",
    "caller_argv",
    "caller_scenario",
    "decline",
    "dtmf",
    "make_behaviour",
    "no_answer",
    "phone_number",
    "pstn_scenario",
    "register_argv",
    "register_scenario",
    "reject",
    "renumber_dtmf",
    "uas_argv",
    "uas_scenario",
]

#: the SIPp binary (Debian's ``sip-tester``)
SIPP = "/usr/bin/sipp"
#: the captures ``sip-tester`` ships: speech and one RFC 2833 key press per key
PCAPS = Path("/usr/share/sip-tester")
#: where the re-numbered DTMF captures are kept (see :class:`Captures`)
DTMF_CACHE = Path(tempfile.gettempdir()) / "agi_app-dtmf"

#: the reason phrase of each final code a phone may reject with
REASONS = {
    480: "Temporarily Unavailable",
    486: "Busy Here",
    503: "Service Unavailable",
    600: "Busy Everywhere",
    603: "Decline",
}
_PHONE_NUMBER = re.compile(r"^\+?[0-9]{3,15}$")
_DIGIT_FILES = {"*": "star", "#": "pound", **{d: d for d in "0123456789"}}
#: RTP sequence numbers and timestamps a key press takes up in a call
_SEQ_PER_KEY, _TS_PER_KEY = 64, 16000


def phone_number(text: str) -> str:
    """``text`` as a dialled number without its ``+``; :class:`ValueError`
    unless it is 3 to 15 digits (with an optional leading ``+``)."""
    if not isinstance(text, str) or not _PHONE_NUMBER.match(text):
        raise ValueError(f"not a phone number: {text!r}")
    return text.lstrip("+")


# ------------------------------------------------------------------ behaviours


@dataclass(frozen=True)
class Behaviour:
    """What a phone does with an INVITE.

    ``kind`` is ``answer`` (ring ``answer_after`` s, answer, optionally send
    ``dtmf`` digits starting ``dtmf_after`` s after the answer with
    ``dtmf_gap`` s between them, then hang up after ``hangup_after`` s or,
    when that is ``None``, talk until the other side hangs up),
    ``reject`` (final response ``code`` at once: 486 busy, 603 decline...)
    or ``no_answer`` (ring until the caller cancels).
    """

    kind: str = "answer"
    answer_after: float = 0.0
    hangup_after: float | None = None
    code: int = 486
    dtmf: str = ""
    dtmf_after: float = 0.5
    dtmf_gap: float = 0.3
    #: send 7 s of recorded speech (A-law) after answering, so a recording
    #: of the call has sound from this side too
    audio: bool = True

    def __post_init__(self) -> None:
        if self.kind not in ("answer", "reject", "no_answer"):
            raise ValueError(f"unknown behaviour {self.kind!r}")
        if self.kind == "reject" and not 400 <= self.code <= 699:
            raise ValueError(f"a rejection needs a 4xx-6xx code, not {self.code}")
        bad = [d for d in self.dtmf if d not in _DIGIT_FILES]
        if bad:
            raise ValueError(f"DTMF digits must be 0-9 * #, not {''.join(bad)!r}")
        for name in ("answer_after", "dtmf_after", "dtmf_gap"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.hangup_after is not None and self.hangup_after < 0:
            raise ValueError("hangup_after must not be negative")

    def describe(self) -> str:
        """A short human description (used in scenario names and reports)."""
        if self.kind == "reject":
            return f"reject {self.code}"
        if self.kind == "no_answer":
            return "ring, never answer"
        text = f"answer after {self.answer_after:g} s"
        if self.dtmf:
            text += f", send DTMF {self.dtmf}"
        if self.hangup_after is None:
            return text + ", talk until the other side hangs up"
        return text + f", hang up after {self.hangup_after:g} s"


def answer(after: float = 0.0, hangup_after: float | None = None) -> Behaviour:
    """Ring ``after`` s, answer, hang up after ``hangup_after`` s (``None``:
    wait for the other side's BYE)."""
    return Behaviour("answer", answer_after=after, hangup_after=hangup_after)


def busy() -> Behaviour:
    """Answer 486 Busy Here (Originate reason 5, DIALSTATUS BUSY)."""
    return Behaviour("reject", code=486)


def decline() -> Behaviour:
    """Answer 603 Decline."""
    return Behaviour("reject", code=603)


def reject(code: int) -> Behaviour:
    """Answer with any final error ``code`` (480, 503, 600...)."""
    return Behaviour("reject", code=code)


def no_answer() -> Behaviour:
    """Ring (180) until the caller gives up (CANCEL)."""
    return Behaviour("no_answer")


def dtmf(
    digits: str,
    after: float = 0.5,
    gap: float = 0.3,
    answer_after: float = 0.0,
    hangup_after: float | None = None,
) -> Behaviour:
    """Answer, then send ``digits`` (0-9, ``*``, ``#``, in any order) as
    RFC 2833 events (``after`` s after the answer, ``gap`` s apart)."""
    return Behaviour(
        "answer",
        answer_after=answer_after,
        hangup_after=hangup_after,
        dtmf=digits,
        dtmf_after=after,
        dtmf_gap=gap,
        # one RTP stream at a time: speech and DTMF events would interleave
        audio=False,
    )


_KINDS: dict[str, Callable[..., Behaviour]] = {
    "answer": answer,
    "busy": busy,
    "decline": decline,
    "no_answer": no_answer,
    "reject": reject,
    "dtmf": dtmf,
}


def make_behaviour(behaviour: Behaviour | str = "answer", **kwargs: Any) -> Behaviour:
    """A :class:`Behaviour` from an instance or a name (``answer``, ``busy``,
    ``decline``, ``no_answer``, ``reject``, ``dtmf``) plus its arguments."""
    if isinstance(behaviour, Behaviour):
        return replace(behaviour, **kwargs) if kwargs else behaviour
    if behaviour not in _KINDS:
        raise ValueError(f"unknown behaviour {behaviour!r} (known: {', '.join(_KINDS)})")
    if behaviour == "answer" and "answer_after" in kwargs:
        kwargs["after"] = kwargs.pop("answer_after")
    return _KINDS[behaviour](**kwargs)


# ------------------------------------------------------------------ captures


def renumber_dtmf(capture: bytes, step: int) -> bytes:
    """SIPp's capture of one RFC 2833 key press with its RTP sequence numbers
    and timestamps moved to the ``step``-th key of a call: Asterisk takes a
    key only if its RTP comes after the previous key's, and the shipped
    captures are numbered in the order 1, 2 ... 9 of one recording.
    :class:`ValueError` when ``capture`` is not a little-endian pcap file."""
    if len(capture) < 24 or struct.unpack("<I", capture[:4])[0] != 0xA1B2C3D4:
        raise ValueError("not a little-endian pcap file")
    out, offset, first_seq = bytearray(capture[:24]), 24, None
    while offset + 16 <= len(capture):
        length = struct.unpack("<I", capture[offset + 8 : offset + 12])[0]
        frame = bytearray(capture[offset + 16 : offset + 16 + length])
        rtp = 14 + (frame[14] & 0x0F) * 4 + 8  # Ethernet, IPv4 header, UDP header
        seq = struct.unpack(">H", frame[rtp + 2 : rtp + 4])[0]
        first_seq = seq if first_seq is None else first_seq
        frame[rtp + 2 : rtp + 8] = struct.pack(
            ">HI", 1000 + _SEQ_PER_KEY * step + (seq - first_seq), _TS_PER_KEY * (step + 1)
        )
        out += capture[offset : offset + 16] + frame
        offset += 16 + length
    return bytes(out)


@dataclass(frozen=True)
class Captures:
    """The pcap files a scenario plays: the speech and the key presses
    shipped in ``pcaps``, each key press re-numbered once per position in a
    call and kept in ``cache``."""

    pcaps: Path = PCAPS
    cache: Path = DTMF_CACHE

    @property
    def speech(self) -> Path:
        """About 7 s of recorded speech, A-law."""
        return self.pcaps / "g711a.pcap"

    def key(self, digit: str, step: int) -> Path:
        """The capture SIPp plays for ``digit`` as the ``step``-th key of a
        call (any order of keys works), made on first use."""
        name = _DIGIT_FILES[digit]
        path = self.cache / f"v1-{name}-{step}.pcap"
        if not path.exists():
            self.cache.mkdir(parents=True, exist_ok=True)
            data = renumber_dtmf((self.pcaps / f"dtmf_2833_{name}.pcap").read_bytes(), step)
            # several test sessions may make the same file at once
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        return path


# ------------------------------------------------------------------ scenarios


def _fragment(name: str, **values: object) -> str:
    text = (resources.files("agi_app.sandbox") / "sipp" / f"{name}.xml").read_text()
    return _util.render(text, values)


def _ms(seconds: float) -> int:
    # SIPp reads a timeout of 0 as "no timeout"
    return max(1, round(seconds * 1000))


def _branch(i: int, b: Behaviour, audio_port: int, captures: Captures) -> str:
    parts = [f'  <label id="b{i}"/>']
    if b.kind == "reject":
        parts.append(_fragment("reject", branch=i, code=b.code, reason=REASONS.get(b.code, "Nope")))
        return "\n".join(parts)
    parts.append(_fragment("ringing", branch=i))
    if b.kind == "no_answer":
        parts.append(f'  <recv request="CANCEL" next="b{i}_cancel"/>')
        parts.append(_fragment("cancelled", branch=i))
        return "\n".join(parts)
    if b.answer_after > 0:
        parts.append(
            f'  <recv request="CANCEL" timeout="{_ms(b.answer_after)}" '
            f'ontimeout="b{i}_answer" next="b{i}_cancel"/>'
        )
        parts.append(_fragment("cancelled", branch=i))
    speech = (
        f'  <nop><action><exec play_pcap_audio="{captures.speech}"/></action></nop>\n'
        if b.audio
        else ""
    )
    parts.append(_fragment("answer", branch=i, audio_port=audio_port, audio=speech))
    for step, digit in enumerate(b.dtmf):
        wait = b.dtmf_after if step == 0 else b.dtmf_gap
        pcap = captures.key(digit, step)
        parts.append(
            _fragment("dtmf_digit", branch=i, step=step, wait_ms=_ms(wait), pcap=pcap, digit=digit)
        )
    if b.hangup_after is None:
        parts.append(_fragment("wait_bye", branch=i))
    else:
        parts.append(_fragment("hangup", branch=i, wait_ms=_ms(b.hangup_after)))
    parts.append(_fragment("bye_received", branch=i))
    return "\n".join(parts)


def uas_scenario(
    default: Behaviour,
    audio_port: int,
    rules: list[tuple[list[str], Behaviour]] | None = None,
    title: str = "phone",
    captures: Captures | None = None,
) -> str:
    """A SIPp UAS scenario: ``rules`` maps dialled numbers to behaviours
    (checked in order on the INVITE's request URI), ``default`` is for
    every other number.  ``audio_port`` is the media port the answer's SDP
    offers; ``captures`` where the audio it plays comes from."""
    captures = captures or Captures()
    rules = rules or []
    rule_actions, dispatch, branches = [], [], []
    for i, (numbers, behaviour) in enumerate(rules):
        alternatives = "|".join(sorted({phone_number(n) for n in numbers}))
        rule_actions.append(
            f'      <ereg regexp="^INVITE sip:[+]?({alternatives})@" search_in="msg" '
            f'check_it="false" assign_to="r{i}"/>'
        )
        dispatch.append(f'  <nop test="r{i}" next="b{i}"/>')
        branches.append(_branch(i, behaviour, audio_port, captures))
    d = len(rules)
    if rules:
        dispatch.append(f'  <nop next="b{d}"/>')
    branches.append(_branch(d, default, audio_port, captures))
    return _fragment(
        "uas",
        title=title,
        rules="\n".join(rule_actions),
        dispatch="\n".join(dispatch),
        branches="\n".join(branches),
        rule_vars="".join(f",r{i}" for i in range(len(rules))),
    )


def pstn_scenario(
    default: Behaviour,
    rules: Mapping[str, Behaviour],
    audio_port: int,
    captures: Captures | None = None,
) -> str:
    """The PSTN's scenario: each number of ``rules`` answers with its
    behaviour (numbers sharing one behaviour share one branch), every other
    number with ``default``."""
    groups: dict[Behaviour, list[str]] = {}
    for number, behaviour in rules.items():
        groups.setdefault(behaviour, []).append(number)
    return uas_scenario(
        default,
        audio_port,
        rules=[(numbers, b) for b, numbers in groups.items()],
        title="pstn",
        captures=captures,
    )


def register_scenario(user: str, contact_port: int, expires: int) -> str:
    """A one-shot SIPp UAC scenario that REGISTERs ``user``'s contact
    (``127.0.0.1:contact_port``) for ``expires`` s; 0 takes it back, and
    the operator is offline."""
    if expires < 0:
        raise ValueError("expires must not be negative")
    return _fragment("register", user=user, contact_port=contact_port, expires=expires)


#: where the CANCEL and the ACK of a 487 stand in caller.xml, counted in
#: scenario messages from the INVITE: they carry the INVITE's branch
#: (SIPp's ``[branch-N]``)
_CANCEL_OFFSET, _ACK_OFFSET = 9, 12


def caller_scenario(caller: str, wait: float, talk: float, name: str = "Caller") -> str:
    """A SIPp UAC scenario of a caller from the outside: it calls (the
    number dialled is SIPp's ``-s``) from ``caller`` (shown as ``name``),
    waits ``wait`` s for an answer, talks ``talk`` s and hangs up; without
    an answer by then it cancels.  A final error answer ends it too."""
    phone_number(caller)
    if not name.replace(" ", "").isalnum():
        raise ValueError(f"a caller name of letters, digits and spaces, not {name!r}")
    return _fragment("caller", caller=caller, shown=name, wait_ms=_ms(wait), talk_ms=_ms(talk),
                     cancel_offset=_CANCEL_OFFSET, ack_offset=_ACK_OFFSET)  # fmt: skip


# ------------------------------------------------------------------ command lines


def uas_argv(
    scenario: Path,
    sip_port: int,
    media_port: int,
    log: Path,
    errors: Path,
    messages: Path | None = None,
) -> list[str]:
    """SIPp running ``scenario`` as a UAS on ``127.0.0.1:sip_port`` (its
    media sockets from ``media_port``), writing the scenario's ``<log>``
    lines to ``log`` and what went wrong to ``errors``; with ``messages``,
    also every SIP message it sends and receives, whole, to that file (how a
    test reads the headers of the INVITEs a phone got)."""
    argv = [
        SIPP, "-sf", str(scenario), "-i", "127.0.0.1", "-p", str(sip_port),
        "-mp", str(media_port), "-bind_local", "-nostdin", "-aa",
        "-trace_logs", "-log_file", str(log), "-trace_err", "-error_file", str(errors),
    ]  # fmt: skip
    if messages is not None:
        argv += ["-trace_msg", "-message_file", str(messages)]
    return argv


def register_argv(
    scenario: Path, pbx_sip_port: int, sip_port: int, media_port: int, errors: Path
) -> list[str]:
    """SIPp sending the REGISTER of ``scenario`` once from
    ``127.0.0.1:sip_port`` to the PBX on ``127.0.0.1:pbx_sip_port``; it
    fails (exit status not 0) when no 200 comes within 5 s."""
    return [
        SIPP, f"127.0.0.1:{pbx_sip_port}", "-sf", str(scenario), "-i", "127.0.0.1",
        "-p", str(sip_port), "-mp", str(media_port), "-bind_local",
        "-m", "1", "-nostdin", "-timeout", "5s", "-timeout_error",
        "-trace_err", "-error_file", str(errors),
    ]  # fmt: skip


def caller_argv(
    scenario: Path,
    number: str,
    pbx_sip_port: int,
    sip_port: int,
    media_port: int,
    log: Path,
    errors: Path,
    timeout: float = 60.0,
) -> list[str]:
    """SIPp calling ``number`` once with the caller ``scenario`` from
    ``127.0.0.1:sip_port`` (the trunk's address: Asterisk knows the trunk by
    it) to the PBX on ``127.0.0.1:pbx_sip_port``; its log lines go to
    ``log``.  Exit status 0: answered or cancelled; 1: a final error answer."""
    return [
        SIPP, f"127.0.0.1:{pbx_sip_port}", "-sf", str(scenario), "-s", phone_number(number),
        "-i", "127.0.0.1", "-p", str(sip_port), "-mp", str(media_port), "-bind_local",
        "-m", "1", "-nostdin", "-timeout", f"{max(1, round(timeout))}s", "-timeout_error",
        "-trace_logs", "-log_file", str(log), "-trace_err", "-error_file", str(errors),
    ]  # fmt: skip
