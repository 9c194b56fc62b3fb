"""A floor for agi_app's AMI link: the bare cost of receiving what Asterisk
sends per call, in a process of its own.

``bench/call_load.py --floor`` starts two of these beside agi_app, logged in
to the same Asterisk as agi_app's user with the same event classes
(``Events: call,system``), and reads their CPU over the same window as
agi_app's:

* ``--mode receive``: a bare Twisted ``Protocol`` on the epoll reactor that
  only counts the bytes (the reactor, the socket reads, nothing else);
* ``--mode parse``: the same, each chunk fed to agi_app's own
  :class:`~agi_app.ami.message.AMIParser` with the events agi_app follows,
  and every header of every delivered event read once (a message object
  per event, no subscriber).

Neither can be beaten by any AMI client written on Twisted in Python: what
agi_app spends on its AMI link beyond the second is its own work (the
channel list, the call tracker, the lifecycle).

Usage (normally started by call_load.py)::

    .venv/bin/python bench/ami_floor.py --port 27838 --username agi_app --secret ... \\
        --mode parse
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--username", required=True)
    p.add_argument("--secret", required=True)
    p.add_argument("--events", default="call,system", help="the login's Events: mask")
    p.add_argument("--mode", choices=("receive", "parse"), default="receive")
    p.add_argument("--dump", default="", help="also write every byte received to this file "
                   "(a recording to replay offline)")  # fmt: skip
    args = p.parse_args()
    dump = open(args.dump, "wb") if args.dump else None  # noqa: SIM115 - open until exit

    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
    from twisted.internet.protocol import Protocol

    from agi_app.ami.message import AMIMessage, AMIParser
    from agi_app.ami.service import FOLLOWED_EVENTS

    class Floor(Protocol):
        received = 0
        messages = 0

        def __init__(self) -> None:
            self.parser = (
                AMIParser(expect_greeting=True, events=FOLLOWED_EVENTS)
                if args.mode == "parse"
                else None
            )

        def connectionMade(self) -> None:
            self.transport.write(
                f"Action: Login\r\nUsername: {args.username}\r\nSecret: {args.secret}"
                f"\r\nEvents: {args.events}\r\n\r\n".encode()
            )

        def dataReceived(self, data: bytes) -> None:
            self.received += len(data)
            if dump is not None:
                dump.write(data)
            if self.parser is None:
                return
            for item in self.parser.feed(data):
                if isinstance(item, AMIMessage):
                    self.messages += 1
                    item.get("Event")  # every header split once, as agi_app's first lookup does

        def connectionLost(self, reason: object = None) -> None:
            if reactor.running:
                reactor.stop()

    def stop(*_: object) -> None:
        reactor.callFromThread(reactor.stop)

    signal.signal(signal.SIGTERM, stop)
    d = connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", args.port), Floor())
    d.addErrback(lambda f: (print(f"ami_floor: {f.getErrorMessage()}", file=sys.stderr),
                            reactor.stop()))  # fmt: skip
    reactor.run()
    if dump is not None:
        dump.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
