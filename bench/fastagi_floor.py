"""A floor for agi_app's FastAGI server: a bare Twisted line protocol running
a makeCall's script, in a process of its own.

``bench/call_load.py --floor`` starts the server (``serve``) and, right
after the load window of each rate, a driver (``drive``) that plays
Asterisk's side on loopback: one connection per call at the same rate and
for as many calls as agi_app took, the environment block Asterisk sends
for agi_app's ``operator_call`` script (the same 25 lines, in the same two
writes), and a reply to every command.  Only the server's CPU is read
(from ``/proc``); the driver stands in for Asterisk.

The server is what any Twisted FastAGI server needs and nothing more: a
:class:`~twisted.protocols.basic.LineReceiver` on the epoll reactor that
reads the environment into a dict, then sends the eight commands agi_app
sends for a makeCall's operator leg (:func:`script`: captured on the
sandbox), each after the reply to the one before, and closes the
connection after the last reply.  No Deferreds, timeouts, reply parsing
beyond the status code, or call state: what agi_app spends on a session
beyond this is its own work.

Usage (normally started by call_load.py)::

    .venv/bin/python bench/fastagi_floor.py serve --port 0       # prints "listening PORT"
    .venv/bin/python bench/fastagi_floor.py drive --port PORT --calls 500 --rate 50
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

#: seconds before the driver replies to these applications (the operator
#: hears the wait prompt until it answers, the client is dialled and
#: talks); every other command is answered at once
DELAYS = {"Playback": 0.2, "Dial": 2.5}


def environment(n: int, port: int) -> list[bytes]:
    """The environment Asterisk 22 sends for call ``n``'s operator leg, in
    the two writes it used on the sandbox."""
    ext = f"10{n % 10:02d}"
    phone = f"38063{n % 10_000_000:07d}"
    first = (
        "agi_network: yes\nagi_network_script: operator_call\n"
        f"agi_request: agi://127.0.0.1:{port}/operator_call\n"
        f"agi_channel: PJSIP/{ext}-{n % 0x100000000:08x}\nagi_language: en\nagi_type: PJSIP\n"
        f"agi_uniqueid: agiapp-{n:032x}\n"
        "agi_version: 22.10.1+dfsg+~cs6.17.60671434-1\n"
        f"agi_callerid: {phone}\nagi_calleridname: {phone}\nagi_callingpres: 0\n"
        "agi_callingani2: 0\nagi_callington: 0\nagi_callingtns: 0\nagi_dnid: unknown\n"
        "agi_rdnis: unknown\nagi_context: agi-app-operator\n"
    )
    second = (
        "agi_extension: s\nagi_priority: 3\nagi_enhanced: 0.0\nagi_accountcode: \n"
        f"agi_threadid: {140374357169856 + n}\nagi_arg_1: {n:023x}\n\n"
    )
    return [first.encode(), second.encode()]


def script(env: dict[str, str]) -> list[bytes]:
    """The command lines agi_app sends in a makeCall's operator leg (the
    ``operator_call`` script, then the outcome agi_app's FastAGI server
    sets after every script), made from the session's environment."""
    call_id = env.get("agi_arg_1", "")
    ext = env.get("agi_channel", "PJSIP/0-").split("/", 1)[-1].rsplit("-", 1)[0]
    phone = env.get("agi_callerid", "")
    return [
        b'EXEC Playback "agi_app/please-wait"\n',
        f'EXEC MixMonitor "/srv/agi_app/test2000/monitor/o1_{call_id}.wav,b"\n'.encode(),
        f'SET VARIABLE "CALLERID(all)" "\\"\\" <{ext}>"\n'.encode(),
        b'SET VARIABLE "AGI_APP_DIALLED" "1"\n',
        f'EXEC Dial "PJSIP/{phone}@pstn,40,g"\n'.encode(),
        b'GET VARIABLE "DIALSTATUS"\n',
        b'GET VARIABLE "AGI_APP_HANDOFF"\n',
        b'SET VARIABLE "AGI_APP_RESULT" "OK"\n',
    ]


#: commands (and so replies) per session
COMMANDS = len(script({}))


def reply(command: bytes) -> bytes:
    """What Asterisk answers to ``command`` in a completed makeCall."""
    if command.startswith(b"SET VARIABLE"):
        return b"200 result=1\n"
    if command.startswith(b'GET VARIABLE "DIALSTATUS"'):
        return b"200 result=1 (ANSWER)\n"
    return b"200 result=0\n"


def server_factory() -> Any:
    """The bare server: a factory of LineReceivers, counting finished sessions."""
    from twisted.internet.protocol import Factory
    from twisted.protocols.basic import LineReceiver

    class Session(LineReceiver):
        delimiter = b"\n"

        def connectionMade(self) -> None:
            self.env: dict[str, str] = {}
            self.commands: list[bytes] | None = None
            self.sent = 0

        def lineReceived(self, line: bytes) -> None:
            if self.commands is None:  # the environment, up to a blank line
                if line:
                    key, _, value = line.decode("utf-8", "replace").partition(": ")
                    self.env[key] = value
                    return
                self.commands = script(self.env)
            elif not line.startswith(b"200 "):
                self.transport.loseConnection()  # a failed command ends the script
                return
            if self.sent == len(self.commands):
                self.factory.sessions += 1
                self.transport.loseConnection()
                return
            self.transport.write(self.commands[self.sent])
            self.sent += 1

    factory = Factory.forProtocol(Session)
    factory.sessions = 0
    return factory


def serve(port: int) -> int:
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor

    listening = reactor.listenTCP(port, server_factory(), interface="127.0.0.1")
    print(f"listening {listening.getHost().port}", flush=True)
    reactor.run()  # SIGTERM stops it (the reactor's own handler)
    return 0


def drive(port: int, calls: int, rate: float, scale: float = 1.0) -> int:
    """Asterisk's side: ``calls`` sessions at ``rate``, the replies of
    :data:`DELAYS` after those times ``scale``; prints ``sessions=N
    commands=M failed=K`` and returns 0 if every session got all its commands."""
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
    from twisted.protocols.basic import LineReceiver

    done: list[int] = []  # commands each finished session got
    failed: list[str] = []

    class Asterisk(LineReceiver):
        delimiter = b"\n"

        def __init__(self, n: int):
            self.n = n
            self.commands = 0

        def connectionMade(self) -> None:
            for part in environment(self.n, port):
                self.transport.write(part)

        def lineReceived(self, line: bytes) -> None:
            self.commands += 1
            app = line.split(b" ", 2)[1].decode() if line.startswith(b"EXEC ") else ""
            delay = DELAYS.get(app, 0.0) * scale
            if delay:
                reactor.callLater(delay, self.answer, line)
            else:
                self.answer(line)

        def answer(self, line: bytes) -> None:
            if self.transport.connected:
                self.transport.write(reply(line))

        def connectionLost(self, reason: object = None) -> None:
            done.append(self.commands)
            if len(done) + len(failed) == calls:
                reactor.stop()

    def connect(n: int) -> None:
        d = connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Asterisk(n))

        def refused(f: Any) -> None:
            failed.append(f.getErrorMessage())
            if len(done) + len(failed) == calls:
                reactor.stop()

        d.addErrback(refused)

    start = time.monotonic()

    def place(n: int) -> None:
        connect(n)
        if n + 1 < calls:
            reactor.callLater(max(0.0, start + (n + 1) / rate - time.monotonic()), place, n + 1)

    if calls:
        reactor.callWhenRunning(place, 0)
        reactor.run()
    complete = sum(1 for c in done if c == COMMANDS)
    print(f"sessions={complete} commands={sum(done)} failed={len(failed) + len(done) - complete}",
          flush=True)  # fmt: skip
    return 0 if complete == calls else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=("serve", "drive"))
    p.add_argument("--port", type=int, default=0, help="serve: 0 for any free port (printed)")
    p.add_argument("--calls", type=int, default=0, help="drive: sessions to open")
    p.add_argument("--rate", type=float, default=50.0, help="drive: sessions per second")
    p.add_argument("--scale", type=float, default=1.0,
                   help="drive: times the delays of Playback and Dial (0: none)")  # fmt: skip
    args = p.parse_args()
    if args.mode == "serve":
        return serve(args.port)
    return drive(args.port, args.calls, args.rate, args.scale)


if __name__ == "__main__":
    sys.exit(main())
