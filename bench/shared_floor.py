"""The HTTP and FastAGI floors in one process: ``bench/http_floor.py``'s
Site and ``bench/fastagi_floor.py``'s server on one epoll reactor.

``bench/call_load.py --floor`` sends it the same makeCall requests and
FastAGI sessions as to the two separate floors, after them, and prints its
CPU per call beside their sum: what one process gains by serving both
(socket events of both served in one reactor wake-up now and then).

Usage (normally started by call_load.py)::

    .venv/bin/python bench/shared_floor.py      # prints "listening HTTP_PORT FASTAGI_PORT"
"""

from __future__ import annotations

import sys


def main() -> int:
    from twisted.internet import epollreactor

    epollreactor.install()
    from fastagi_floor import server_factory
    from http_floor import make_site
    from twisted.internet import reactor

    http = reactor.listenTCP(0, make_site(), interface="127.0.0.1")
    fastagi = reactor.listenTCP(0, server_factory(), interface="127.0.0.1")
    print(f"listening {http.getHost().port} {fastagi.getHost().port}", flush=True)
    reactor.run()  # SIGTERM stops it (the reactor's own handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
