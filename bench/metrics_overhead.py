"""What the metrics' HTTP observer costs a request: the CPU time of one
request through the whole HTTP stack (``build_site``: parsing, routing, the
API key, the answer, the access log formatter), in memory on one keep-alive
connection, without and with ``observe=Metrics.observe_request``.

The two run in alternating rounds (40 by default) and the paired difference
of each round is kept, so a disturbance from other processes hits both
alike; the median of those differences is the figure.

Usage::

    .venv/bin/python bench/metrics_overhead.py [--rounds 40] [--requests 10000]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.testing import MemoryReactorClock, StringTransport  # noqa: E402

from agi_app.metrics import Metrics  # noqa: E402
from agi_app.web import Router, build_site  # noqa: E402

REQUEST = b"GET /api/x HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: k\r\n\r\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--requests", type=int, default=10_000, help="requests per round")
    args = parser.parse_args(argv)
    clock = MemoryReactorClock()
    router = Router()
    router.add(("GET",), "/api/x", lambda req: {"a": 1})
    metrics = Metrics(clock=clock)
    connections = {}
    for name, observe in (("without", None), ("with", metrics.observe_request)):
        site = build_site(router, api_keys=("k",), static_dir=None, clock=clock, observe=observe)
        proto = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        proto.makeConnection(transport)
        connections[name] = (proto, transport)

    def one_round(name: str) -> float:
        proto, transport = connections[name]
        gc.disable()
        started = time.process_time()
        for _ in range(args.requests):
            proto.dataReceived(REQUEST)
            transport.clear()
        took = time.process_time() - started
        gc.enable()
        return took / args.requests * 1e6

    times: dict[str, list[float]] = {"without": [], "with": []}
    differences = []
    for n in range(args.rounds):
        order = ("without", "with") if n % 2 else ("with", "without")
        got = {name: one_round(name) for name in order}
        for name, us in got.items():
            times[name].append(us)
        differences.append(got["with"] - got["without"])
    for name, values in times.items():
        print(f"{name:7} observer: median {statistics.median(values):6.2f} us/request, "
              f"best {min(values):6.2f}")  # fmt: skip
    print(f"the observer's cost: {statistics.median(differences):+.2f} us/request "
          f"(median of {args.rounds} paired rounds)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
