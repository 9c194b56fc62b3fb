"""SIP phones for the sandbox PBX: SIPp processes on 127.0.0.1.

An operator phone is a SIPp UAS on its own SIP port whose contact is
REGISTERed with the PBX by a one-shot SIPp UAC (``Expires: 0`` takes it
back: the operator is then really offline).  The PSTN is one SIPp UAS
behind the ``pstn`` trunk whose behaviour is chosen per dialled number.

This module runs the processes: their ports, folders and log files.  What
a phone does (:class:`~agi_app.sandbox.scenarios.Behaviour`) and the SIPp
scenario and command line it becomes are rendered by
:mod:`agi_app.sandbox.scenarios`; the behaviours are re-exported here.
Every step of a call becomes a ``<log>`` line that :meth:`Phone.calls`
parses back; a phone started with ``trace_sip`` also keeps every SIP message
it sent and received whole (SIPp's ``-trace_msg``), and :meth:`Phone.invites`
reads back the headers of the INVITEs it got.  The audio a phone answers
with goes to a small UDP sink (:class:`MediaSink`) that counts what arrived
per call, so a test can tell whether media really flowed.
"""

from __future__ import annotations

import atexit
import itertools
import re
import select
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agi_app.sandbox import _util, scenarios
from agi_app.sandbox.pbx import PBX
from agi_app.sandbox.pbx_config import OPERATORS
from agi_app.sandbox.scenarios import (
    SIPP,
    Behaviour,
    answer,
    busy,
    decline,
    dtmf,
    make_behaviour,
    no_answer,
    reject,
)

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

__all__ = [
    "SIPP",
    "Behaviour",
    "MediaSink",
    "Phone",
    "Phones",
    "Pstn",
    "PhoneError",
    "answer",
    "busy",
    "decline",
    "dtmf",
    "header_values",
    "kill_phones",
    "make_behaviour",
    "no_answer",
    "parse_log",
    "parse_messages",
    "reject",
]


class PhoneError(RuntimeError):
    """A SIPp phone could not be started, registered or stopped."""


# ------------------------------------------------------------------ the log


_TS = re.compile(r"(\d{9,11}\.\d{6})")
_NAME_ADDR = re.compile(r'^\s*(?:"((?:[^"\\]|\\.)*)"|([^<"]*?))\s*<([^>]*)>')
_URI_USER = re.compile(r"^sips?:([^@;>]+)@")


def _time(field: str) -> float | None:
    m = _TS.search(field)
    if m:
        return float(m.group(1))
    try:
        return datetime.strptime(field.strip()[:26], "%Y-%m-%d\t%H:%M:%S.%f").timestamp()
    except ValueError:
        return None


def _party(header: str) -> tuple[str, str, str]:
    """(display name, number/user, URI) of a From/To value."""
    m = _NAME_ADDR.match(header)
    if m:
        name = (m.group(1) if m.group(1) is not None else m.group(2) or "").strip()
        uri = m.group(3)
    else:
        name, uri = "", header.strip().split(";", 1)[0]
    u = _URI_USER.match(uri)
    return name.replace('\\"', '"'), (u.group(1) if u else ""), uri


def parse_log(text: str) -> list[dict[str, Any]]:
    """Turn the ``<log>`` lines of a phone's SIPp log into one dict per
    call, in the order the INVITEs arrived.  Keys: ``call_id``,
    ``request_uri``, ``number`` (the dialled user part), ``from``,
    ``from_name``, ``from_number``, ``to``, ``invite_time``,
    ``ringing_time``, ``answer_time``, ``end_time``, ``end`` (``bye_received``,
    ``bye_sent``, ``cancel``, ``rejected`` or ``None`` while going on),
    ``hung_up_by`` (``remote``, ``phone`` or ``None``), ``code`` (of a
    rejection), ``dtmf`` (digits sent), ``rtp_port`` (the PBX's media port)."""
    calls: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 3:
            continue
        event, when, call_id = parts[0], _time(parts[1]), parts[2].strip()
        if event == "INVITE" and len(parts) >= 7:
            from_name, from_number, _ = _party(parts[4])
            ruri = parts[3].strip()
            u = _URI_USER.match(ruri)
            calls[call_id] = {
                "call_id": call_id,
                "request_uri": ruri,
                "number": u.group(1) if u else "",
                "from": parts[4].strip(),
                "from_name": from_name,
                "from_number": from_number,
                "to": parts[5].strip(),
                "rtp_port": int(parts[6]) if parts[6].strip().isdigit() else None,
                "invite_time": when,
                "ringing_time": None,
                "answer_time": None,
                "end_time": None,
                "end": None,
                "hung_up_by": None,
                "code": None,
                "dtmf": "",
            }
            continue
        call = calls.get(call_id)
        if call is None:
            continue
        if event == "RINGING":
            call["ringing_time"] = when
        elif event == "ANSWERED":
            call["answer_time"] = when
        elif event == "DTMF" and len(parts) > 3:
            call["dtmf"] += parts[3].strip()
        elif event in ("BYE_RECEIVED", "BYE_SENT", "CANCEL", "REJECTED"):
            call["end"] = event.lower()
            call["end_time"] = when
            call["hung_up_by"] = {"BYE_RECEIVED": "remote", "BYE_SENT": "phone"}.get(event)
            if event == "CANCEL":
                call["hung_up_by"] = "remote"
            if event == "REJECTED" and len(parts) > 3:
                call["code"] = int(parts[3])
    return list(calls.values())


# A message of SIPp's -trace_msg file starts after a line of dashes and the
# time, then "UDP message received [966] bytes :" or "UDP message sent (385
# bytes):" and an empty line.
_MESSAGE_SEPARATOR = re.compile(
    r"^-{20,} (\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{6})\s*$", re.MULTILINE
)


def parse_messages(text: str) -> list[dict[str, Any]]:
    """The SIP messages of a SIPp message file (``-trace_msg``), in order:
    ``direction`` (``received``/``sent``), ``time`` (unix seconds),
    ``start_line`` (``INVITE sip:1000@... SIP/2.0``, ``SIP/2.0 200 OK``),
    ``headers`` (``(name, value)`` pairs as they came, folded lines joined)
    and ``body``.  A message still being written (no blank line after its
    headers yet) is left out."""
    out = []
    marks = list(_MESSAGE_SEPARATOR.finditer(text))
    for i, mark in enumerate(marks):
        end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
        lines = text[mark.end():end].lstrip("\n").split("\n")
        if lines and lines[-1] == "":
            lines.pop()  # the end of the text, not an empty line of the message
        if not lines or " message " not in lines[0]:
            continue
        direction = "received" if " received " in lines[0] else "sent"
        rest = [line.rstrip("\r") for line in lines[1:]]
        while rest and not rest[0].strip():
            rest.pop(0)
        if not rest or "" not in rest:
            continue
        blank = rest.index("")
        start_line, head, body = rest[0], rest[1:blank], "\n".join(rest[blank + 1 :])
        headers: list[tuple[str, str]] = []
        for line in head:
            if line[:1] in (" ", "\t") and headers:
                name, value = headers[-1]
                headers[-1] = (name, f"{value} {line.strip()}")
                continue
            name, sep, value = line.partition(":")
            if sep:
                headers.append((name.strip(), value.strip()))
        when = datetime.strptime(mark.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
        out.append({"direction": direction, "time": when, "start_line": start_line,
                    "headers": headers, "body": body.strip("\n")})  # fmt: skip
    return out


def header_values(message: dict[str, Any], name: str) -> list[str]:
    """Every value of header ``name`` (any case) in a message of
    :func:`parse_messages`, in order."""
    want = name.lower()
    return [value for key, value in message["headers"] if key.lower() == want]


# ------------------------------------------------------------------ media


class MediaSink:
    """A UDP port that takes RTP and counts packets per sender port (the
    PBX's media port of one call).  It does not echo: with two echoing phones
    in one call every packet would circle between them for ever and the
    recording would grow without bound.

    It runs in a daemon thread so it works the same under a Twisted test,
    a blocking test and the command line."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.port = port
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self._sock.bind((host, port))
        except OSError as e:
            self._sock.close()
            raise PhoneError(f"media port {host}:{port} is in use: {e}") from None
        self._counts: dict[int, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"media-{port}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._sock], [], [], 0.2)
            if not ready:
                continue
            try:
                _data, addr = self._sock.recvfrom(4096)
            except OSError:
                continue
            with self._lock:
                self._counts[addr[1]] = self._counts.get(addr[1], 0) + 1

    def packets_from(self, port: int | None) -> int:
        """Packets received from the PBX media port ``port``."""
        with self._lock:
            return self._counts.get(port, 0) if port else 0

    def close(self) -> None:
        """Stop the thread and free the port."""
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()


# ------------------------------------------------------------------ phones


@dataclass
class _Run:
    proc: subprocess.Popen
    log: Path
    behaviour: str


@dataclass
class Phone:
    """One SIPp UAS answering on ``127.0.0.1:sip_port``.

    ``media_port`` is the first of a block of ports: SIPp's own media
    sockets (``+0``..``+3``), the :class:`MediaSink` (``+4``) and the
    REGISTER process's media sockets (``+6``..``+9``)."""

    name: str
    pbx: PBX
    sip_port: int
    media_port: int
    register_port: int | None = None
    folder: Path | None = None
    #: outlive this Python process (the command line's demo phones): no
    #: MediaSink thread counts their media
    detached: bool = False
    log: Callable[[str], None] = field(default=print, repr=False)
    _run: _Run | None = field(default=None, init=False, repr=False)
    _sink: MediaSink | None = field(default=None, init=False, repr=False)
    #: SIPp log files of this phone and where in each the calls to report begin
    _logs: list[tuple[Path, int]] = field(default_factory=list, init=False, repr=False)
    #: keep every SIP message (SIPp ``-trace_msg``): :meth:`invites` reads them
    trace_sip: bool = False
    #: SIPp message files of this phone and where in each the messages to report begin
    _message_files: list[tuple[Path, int]] = field(
        default_factory=list, init=False, repr=False
    )
    _seq: Any = field(default_factory=lambda: itertools.count(1), init=False, repr=False)
    registered: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.folder = self.folder or (self.pbx.phones_dir / self.name)

    # -------------------------------------------------------- processes

    @property
    def running(self) -> bool:
        """True while the UAS process is alive."""
        return self._run is not None and self._run.proc.poll() is None

    def _scenario(self, behaviour: Behaviour) -> str:
        return scenarios.uas_scenario(
            behaviour, self.audio_port, title=f"{self.name}: {behaviour.describe()}"
        )

    @property
    def audio_port(self) -> int:
        """The media port this phone answers with (in its SDP)."""
        return self.media_port if self.detached else self.media_port + 4

    def start(
        self,
        behaviour: Behaviour | None = None,
        register: bool = True,
        trace_sip: bool | None = None,
    ) -> Phone:
        """Start (or restart with a new behaviour) the UAS process, then
        register the phone's contact when it has a REGISTER port.
        ``trace_sip``: keep every SIP message for :meth:`invites` (None:
        as before)."""
        if trace_sip is not None:
            self.trace_sip = trace_sip
        behaviour = behaviour or answer()
        self._launch(self._scenario(behaviour), behaviour.describe())
        if register and self.register_port is not None and not self.registered:
            self.register()
        return self

    def _launch(self, scenario: str, what: str) -> None:
        self._kill()
        assert self.folder is not None
        self.folder.mkdir(parents=True, exist_ok=True)
        if self._sink is None and not self.detached:
            self._sink = MediaSink(self.audio_port)
        n = next(self._seq)
        xml = self.folder / f"uas-{n}.xml"
        xml.write_text(scenario)
        log = self.folder / f"uas-{n}.log"
        errors = self.folder / f"uas-{n}.errors"
        messages = self.folder / f"uas-{n}.messages" if self.trace_sip else None
        argv = scenarios.uas_argv(xml, self.sip_port, self.media_port, log, errors, messages)
        if _util.port_in_use(self.sip_port, socket.SOCK_DGRAM):
            raise PhoneError(f"{self.name}: SIP port 127.0.0.1:{self.sip_port}/udp is in use")
        log.touch()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(self.folder / f"uas-{n}.stderr", "wb"),  # noqa: SIM115 - child keeps it
            start_new_session=True,
            cwd=self.folder,
        )
        self._run = _Run(proc, log, what)
        (self.folder / "sipp.pid").write_text(f"{proc.pid}\n")
        self._logs.append((log, 0))
        if messages is not None:
            messages.touch()
            self._message_files.append((messages, 0))
        deadline = time.monotonic() + 5
        while not _util.port_in_use(self.sip_port, socket.SOCK_DGRAM):
            if proc.poll() is not None or time.monotonic() > deadline:
                self._kill()
                why = _util.tail(self.folder / f"uas-{n}.stderr", 20) or _util.tail(errors, 20)
                raise PhoneError(f"{self.name}: SIPp did not start ({what}):\n{why}")
            time.sleep(0.01)

    def _kill(self) -> None:
        if self._run is not None:
            _util.terminate(self._run.proc.pid, timeout=1.0)
            try:
                self._run.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
            self._run = None
        if self.folder is not None:
            (self.folder / "sipp.pid").unlink(missing_ok=True)

    def _register(self, expires: int) -> None:
        if self.register_port is None:
            raise PhoneError(f"{self.name} does not register")
        assert self.folder is not None
        self.folder.mkdir(parents=True, exist_ok=True)
        xml = self.folder / "register.xml"
        xml.write_text(scenarios.register_scenario(self.name, self.sip_port, expires))
        errors = self.folder / "register.errors"
        argv = scenarios.register_argv(
            xml, self.pbx.sip_port, self.register_port, self.media_port + 6, errors
        )
        r = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=15, cwd=self.folder
        )
        if r.returncode != 0:
            raise PhoneError(
                f"{self.name}: REGISTER (expires {expires}) failed ({r.returncode}): "
                f"{_util.tail(errors, 15) or r.stderr.decode(errors='replace')[-800:]}"
            )

    def register(self) -> None:
        """REGISTER this phone's contact with the PBX (the operator is online)."""
        self._register(3600)
        self.registered = True

    def unregister(self) -> None:
        """Take the contact back (``Expires: 0``): the operator is offline."""
        self._register(0)
        self.registered = False

    def stop(self) -> None:
        """Unregister, kill the SIPp process, free the media port."""
        if self.registered:
            try:
                self.unregister()
            except PhoneError as e:
                self.log(f"sandbox: {e}")
                self.registered = False
        self._kill()
        if self._sink is not None:
            self._sink.close()
            self._sink = None

    # -------------------------------------------------------- what it saw

    def calls(self) -> list[dict[str, Any]]:
        """Every call this phone received since :meth:`clear`, oldest first
        (see :func:`parse_log`), each with ``media_packets`` and
        ``media_received``."""
        out = []
        for path, offset in self._logs:
            try:
                with open(path, "rb") as fh:
                    fh.seek(offset)
                    text = fh.read().decode(errors="replace")
            except OSError:
                continue
            text = text[: text.rfind("\n") + 1]  # a line SIPp is still writing waits
            out.extend(parse_log(text))
        for call in out:
            packets = self._sink.packets_from(call["rtp_port"]) if self._sink else 0
            call["media_packets"] = packets
            call["media_received"] = packets > 0
        return out

    def messages(self) -> list[dict[str, Any]]:
        """Every SIP message this phone sent or received since :meth:`clear`
        while started with ``trace_sip``, oldest first (see
        :func:`parse_messages`)."""
        out = []
        for path, offset in self._message_files:
            try:
                with open(path, "rb") as fh:
                    fh.seek(offset)
                    out.extend(parse_messages(fh.read().decode(errors="replace")))
            except OSError:
                continue
        return out

    def invites(self) -> list[dict[str, Any]]:
        """The INVITEs that started a call on this phone (re-INVITEs, which
        carry a To tag, left out), oldest first: each a message of
        :func:`parse_messages` with its ``call_id``; read a header with
        :func:`header_values`.  Needs ``trace_sip``."""
        out = []
        for message in self.messages():
            if message["direction"] != "received" or not message["start_line"].startswith(
                "INVITE "
            ):
                continue
            if any("tag=" in to for to in header_values(message, "To")):
                continue
            call_ids = header_values(message, "Call-ID")
            out.append({**message, "call_id": call_ids[0] if call_ids else ""})
        return out

    def wait_for_invite(self, timeout: float = 5.0, count: int = 1, reactor: Any = None):
        """A Deferred firing with the ``count``-th INVITE of :meth:`invites`."""
        if not self.trace_sip:
            raise PhoneError(f"{self.name} does not keep its SIP messages (start it with "
                             "trace_sip=True)")  # fmt: skip
        return _util.poll(
            lambda: (lambda found: found[count - 1] if len(found) >= count else None)(
                self.invites()
            ),
            timeout,
            reactor,
            lambda: f"{self.name}: no INVITE #{count}; INVITEs seen: {len(self.invites())}",
        )

    def clear(self) -> None:
        """Forget the calls (and SIP messages) seen so far."""
        # SIPp keeps writing at its own offset: never truncate its log, skip it.
        if self._run is None:
            self._logs = []
        else:
            self._logs = [(self._run.log, self._run.log.stat().st_size)]
        self._message_files = [
            (path, path.stat().st_size) for path, _ in self._message_files[-1:] if path.exists()
        ]

    def _wait(self, pick: Callable[[list[dict]], Any], what: str, timeout: float, reactor: Any):
        return _util.poll(
            lambda: pick(self.calls()),
            timeout,
            reactor,
            lambda: f"{self.name}: no {what}; calls seen: {self.calls()}",
        )

    @staticmethod
    def _nth(
        calls: list[dict], count: int, key: str | None, number: str | None = None
    ) -> dict | None:
        done = [
            c
            for c in calls
            if (key is None or c[key] is not None) and (number is None or c["number"] == number)
        ]
        return done[count - 1] if len(done) >= count else None

    def wait_for_call(self, timeout: float = 5.0, count: int = 1, reactor: Any = None) -> Deferred:
        """A Deferred firing with the ``count``-th call that reached this phone."""
        return self._wait(lambda c: self._nth(c, count, None), "INVITE", timeout, reactor)

    def wait_for_answer(self, timeout: float = 5.0, count: int = 1, reactor: Any = None):
        """A Deferred firing with the ``count``-th call this phone answered."""
        return self._wait(lambda c: self._nth(c, count, "answer_time"), "answer", timeout, reactor)

    def wait_for_hangup(
        self, timeout: float = 5.0, count: int = 1, reactor: Any = None, number: str | None = None
    ):
        """A Deferred firing with the ``count``-th call that ended (BYE either
        way, CANCEL or rejection); with ``number``, only calls to that dialled
        number count (the PSTN's calls).  The PBX can report a hangup a few
        milliseconds before the phone has written it down: wait for this
        rather than reading :meth:`calls` right after."""
        what = "hangup" if number is None else f"hangup of a call to {number}"
        return self._wait(lambda c: self._nth(c, count, "end", number), what, timeout, reactor)

    def _block(self, key: str | None, what: str, timeout: float, count: int) -> dict:
        return _util.poll_blocking(
            lambda: self._nth(self.calls(), count, key),
            timeout,
            lambda: f"{self.name}: no {what}; calls seen: {self.calls()}",
        )

    def wait_for_call_blocking(self, timeout: float = 5.0, count: int = 1) -> dict:
        """:meth:`wait_for_call` for code without a reactor."""
        return self._block(None, "INVITE", timeout, count)

    def wait_for_hangup_blocking(self, timeout: float = 5.0, count: int = 1) -> dict:
        """:meth:`wait_for_hangup` for code without a reactor."""
        return self._block("end", "hangup", timeout, count)


class Pstn(Phone):
    """The public network behind the ``pstn`` trunk: one SIPp UAS whose
    behaviour is chosen per dialled number; every other number gets the
    default (answer and talk until the caller hangs up).  A change restarts
    the process (about 20 ms), so set behaviours before placing calls."""

    def __init__(
        self, pbx: PBX, log: Callable[[str], None] = print, detached: bool = False
    ) -> None:
        p = pbx.profile
        super().__init__(
            "pstn", pbx, p.pstn_port, p.pstn_media_port, None, log=log, detached=detached
        )
        self.default: Behaviour = answer()
        self.rules: dict[str, Behaviour] = {}

    def start(self, behaviour: Behaviour | None = None, register: bool = True) -> Pstn:
        """Start (or restart) the PSTN; a ``behaviour`` given here becomes
        the default, how numbers without a rule answer (see :meth:`set_default`)."""
        if behaviour is not None:
            self.default = behaviour
        super().start(self.default, register)
        return self

    def _scenario(self, behaviour: Behaviour) -> str:
        return scenarios.pstn_scenario(self.default, self.rules, self.audio_port)

    def _apply(self) -> None:
        if self.running:
            self.start(self.default)

    def set(self, number: str, behaviour: Behaviour | str = "answer", **kwargs: Any) -> Pstn:
        """How calls to ``number`` go, e.g. ``set("380639920001",
        answer_after=0.5, hangup_after=2)``, ``set(n, "busy")``,
        ``set(n, "no_answer")``, ``set(n, "decline")``, ``set(n, dtmf("12#"))``."""
        self.rules[scenarios.phone_number(number)] = make_behaviour(behaviour, **kwargs)
        self._apply()
        return self

    def set_default(self, behaviour: Behaviour | str = "answer", **kwargs: Any) -> Pstn:
        """How calls to numbers without a rule go."""
        self.default = make_behaviour(behaviour, **kwargs)
        self._apply()
        return self

    def call_in(
        self,
        number: str,
        caller: str,
        *,
        wait: float = 2.0,
        talk: float = 1.0,
        name: str = "Caller",
        reactor: Any = None,
    ) -> Deferred:
        """A call from the outside world to ``number`` (the DID the PBX's
        ``[sandbox-from-pstn]`` receives) from ``caller``: it waits ``wait`` s
        for an answer, talks ``talk`` s and hangs up, or gives up (CANCEL).
        The PSTN's own process gives the trunk's address up meanwhile (the
        PBX knows the trunk by it) and is started again afterwards.

        A Deferred firing with ``{"answered", "cancelled", "rejected",
        "exit"}`` once the caller's SIPp has ended."""
        was_running = self.running
        self._kill()
        assert self.folder is not None
        self.folder.mkdir(parents=True, exist_ok=True)
        n = next(self._seq)
        xml = self.folder / f"caller-{n}.xml"
        xml.write_text(scenarios.caller_scenario(caller, wait, talk, name))
        log, errors = self.folder / f"caller-{n}.log", self.folder / f"caller-{n}.errors"
        p = self.pbx.profile
        argv = scenarios.caller_argv(xml, number, self.pbx.sip_port, p.pstn_port,
                                     self.media_port + 6, log, errors,
                                     timeout=wait + talk + 30)  # fmt: skip
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, cwd=self.folder,
                                start_new_session=True)  # fmt: skip

        def ended() -> dict[str, Any] | None:
            code = proc.poll()
            if code is None:
                return None
            text = log.read_text(errors="replace") if log.exists() else ""
            events = {line.split("|", 1)[0] for line in text.splitlines()}
            return {"answered": "ANSWERED" in events, "cancelled": "CANCEL" in events,
                    "rejected": code != 0 and "ANSWERED" not in events, "exit": code}  # fmt: skip

        def restart(result: Any) -> Any:
            if proc.poll() is None:
                _util.terminate(proc.pid, timeout=1.0)
            if was_running:
                self.start(self.default)
            return result

        d = _util.poll(
            ended, wait + talk + 40, reactor,
            lambda: f"the caller to {number} did not finish: {_util.tail(errors, 10)}",
        )  # fmt: skip
        return d.addBoth(restart)

    def reset(self) -> None:
        """Back to answering every number; forget the calls seen."""
        changed = bool(self.rules) or self.default != answer()
        self.rules, self.default = {}, answer()
        if changed:
            self._apply()
        self.clear()


class Phones:
    """The operator phones (1000-1009) and the PSTN of one sandbox PBX.

    Everything started here is stopped by :meth:`stop_all`, which also runs
    when the Python process exits, unless ``detached`` (the command line's
    demo phones, stopped later by :func:`kill_phones`)."""

    def __init__(
        self, pbx: PBX, log: Callable[[str], None] = print, detached: bool = False
    ) -> None:
        self.pbx = pbx
        self._log = log
        self.detached = detached
        self._operators: dict[str, Phone] = {}
        self.pstn = Pstn(pbx, log=log, detached=detached)
        if not detached:
            atexit.register(self.stop_all)

    def operator(self, number: str) -> Phone:
        """The phone of operator ``number`` (created on first use, not started)."""
        if number not in OPERATORS:
            raise ValueError(f"operator numbers are {OPERATORS[0]}..{OPERATORS[-1]}")
        if number not in self._operators:
            p = self.pbx.profile
            self._operators[number] = Phone(
                number,
                self.pbx,
                p.operator_port(number),
                p.operator_media_port(number),
                p.register_port(number),
                log=self._log,
                detached=self.detached,
            )
        return self._operators[number]

    __getitem__ = operator

    def start(
        self,
        number: str,
        behaviour: Behaviour | str = "answer",
        *,
        trace_sip: bool = False,
        **kwargs: Any,
    ) -> Phone:
        """Bring operator ``number`` online with ``behaviour`` (registered);
        ``trace_sip``: keep its SIP messages (:meth:`Phone.invites`)."""
        return self.operator(number).start(make_behaviour(behaviour, **kwargs),
                                           trace_sip=trace_sip)  # fmt: skip

    def offline(self, number: str) -> Phone:
        """Make sure operator ``number`` is not registered and not running."""
        phone = self.operator(number)
        phone.stop()
        return phone

    def started(self) -> list[Phone]:
        """The operator phones whose SIPp process is running."""
        return [p for p in self._operators.values() if p.running]

    def all_calls(self) -> dict[str, list[dict]]:
        """Calls seen by every phone (operators and the PSTN), by phone name."""
        phones = [*self._operators.values(), self.pstn]
        return {p.name: p.calls() for p in phones if p.calls()}

    def reset(self) -> None:
        """Between tests: stop every operator phone, PSTN back to answering
        everything, forget what was seen."""
        for phone in self._operators.values():
            phone.stop()
            phone.clear()
        if self.pstn.running:
            self.pstn.reset()

    def stop_all(self) -> None:
        """Stop every SIPp process started here (idempotent)."""
        for phone in [*self._operators.values(), self.pstn]:
            try:
                phone.stop()
            except Exception as e:  # noqa: BLE001 - keep stopping the others
                self._log(f"sandbox: stopping {phone.name}: {e}")


def kill_phones(pbx: PBX) -> list[int]:
    """Kill every SIPp process of ``pbx``'s phones found through their pid
    files (demo phones of the command line, leftovers of a killed test
    session).  Returns the pids killed."""
    killed = []
    for pid_file in sorted(pbx.phones_dir.glob("*/sipp.pid")):
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pid = 0
        argv = _util.pid_cmdline(pid) if pid else []
        if argv and argv[0].endswith("sipp") and _util.pid_alive(pid):
            _util.terminate(pid, timeout=1.0)
            killed.append(pid)
        pid_file.unlink(missing_ok=True)
    return killed
