"""agi_app's AMI receive path alone, on a recording of a real AMI stream.

``bench/call_load.py --floor --ami-dump FILE`` records every byte Asterisk
sends to a session logged in as agi_app's user.  This script feeds that
recording, in chunks of the size agi_app reads under load, through the
code that handles it in agi_app -- :class:`~agi_app.ami.protocol.AMIProtocol`
(the parser, the ActionID matching), :class:`~agi_app.ami.service.AMIService`
(the channel list, the dispatch), the call tracker with one subscriber
(so it builds a call view per leg event, as with webhooks or widgets), and
a subscriber doing what the call lifecycle does first with every event
(its call id) -- and prints the CPU per event and per call.  No sockets,
no other process: the figures hardly move with the machine's other work,
so two checkouts can be compared with it::

    .venv/bin/python bench/ami_replay.py /tmp/ami.bin
    .venv/bin/python bench/ami_replay.py /tmp/ami.bin --app-root /tmp/agi_app-before

``--app-root``: import agi_app from another tree (an older checkout).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recording")
    p.add_argument("--app-root", default=str(Path(__file__).resolve().parent.parent))
    p.add_argument("--chunk", type=int, default=4096, help="bytes per dataReceived")
    p.add_argument("--rounds", type=int, default=7, help="the best of this many replays")
    args = p.parse_args()
    sys.path.insert(0, args.app_root)

    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from agi_app.ami.service import AMIService
    from agi_app.live.tracker import CALL_ID_VAR, CallTracker

    data = Path(args.recording).read_bytes()
    chunks = [data[i : i + args.chunk] for i in range(0, len(data), args.chunk)]
    # calls in the recording: one Originate each, one OriginateResponse each
    calls = max(data.count(b"Event: OriginateResponse\r\n"), 1)
    events = data.count(b"\r\nEvent: ") + data.startswith(b"Event: ")

    def replay() -> tuple[float, int, int]:
        clock = Clock()
        service = AMIService("127.0.0.1", 5038, "agi_app", "x", reactor=clock)
        tracker = CallTracker(service, clock=clock)
        tracker.start()
        views = []
        tracker.subscribe(lambda event: views.append(event.call))
        ids = []

        def lifecycle_like(msg: object) -> None:
            variables = getattr(msg, "variables", None)
            ids.append(variables.get(CALL_ID_VAR) if variables else None)

        service.subscribe(lifecycle_like)
        proto = service._build_protocol()
        proto.makeConnection(StringTransport())
        started = time.process_time()
        for chunk in chunks:
            proto.dataReceived(chunk)
        spent = time.process_time() - started
        proto.connectionLost(None)
        return spent, len(ids), len(views)

    best = None
    for _ in range(args.rounds):
        spent, delivered, views = replay()
        best = spent if best is None else min(best, spent)
    assert best is not None
    print(f"{args.app_root}: {len(data) / 1024:.0f} KiB, {events} events, {calls} calls; "
          f"{delivered} events delivered, {views} call views")  # fmt: skip
    print(f"  best of {args.rounds}: {1000 * best:.1f} ms, {1e6 * best / events:.1f} us per event "
          f"received, {1000 * best / calls:.3f} ms per call")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
