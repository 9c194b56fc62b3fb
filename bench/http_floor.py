"""A floor for agi_app's HTTP API: a bare twisted.web server answering
makeCall, in a process of its own.

``bench/call_load.py --floor`` starts one of these and, right after the
load window of each rate, sends it the same requests as it sent agi_app
(``GET /api/makeCall.json`` with the same query, through the same treq
client and persistent connection pool) at the same rate, while it reads
the process's CPU from ``/proc``.  The server is what any twisted.web
program needs and nothing more: a :class:`~twisted.web.server.Site` with
one leaf :class:`~twisted.web.resource.Resource` on the epoll reactor,
no access log, which checks that the query names an extension and a
phone and answers with the headers agi_app's answer has and a body of
its size (``{"call_id":"..."}``, 37 bytes).  No routing, validation, call
placement or store: what agi_app spends on a makeCall beyond this is its
own work.

Usage (normally started by call_load.py)::

    .venv/bin/python bench/http_floor.py --port 0      # prints "listening PORT"
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

#: the body of agi_app's makeCall answer is this long
ANSWER_SIZE = 37


def make_site() -> Any:
    """The Site: one leaf resource answering every GET like agi_app's makeCall."""
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    class MakeCall(Resource):
        isLeaf = True
        answered = 0

        def render_GET(self, request: Any) -> bytes:
            request.setHeader(b"cache-control", b"no-store")
            request.setHeader(b"content-type", b"application/json; charset=utf-8")
            args = request.args
            if not args.get(b"sip") or not args.get(b"phone"):
                request.setResponseCode(400)
                return b'{"error":"sip and phone are required"}'
            MakeCall.answered += 1
            # a call id of agi_app's length (23 hex digits)
            return b'{"call_id":"%023x"}' % MakeCall.answered

    class QuietSite(Site):
        def log(self, request: Any) -> None:
            pass  # no access log

    return QuietSite(MakeCall())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    args = p.parse_args()

    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor

    port = reactor.listenTCP(args.port, make_site(), interface="127.0.0.1")
    print(f"listening {port.getHost().port}", flush=True)
    reactor.run()  # SIGTERM stops it (the reactor's own handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
