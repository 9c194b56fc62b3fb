"""Events benchmark: widget fan-out over WebSocket and webhook deliveries.

1. Fan-out: agi_app's widget server (``WidgetHub`` + ``WidgetFactory``)
   runs in its own process pinned to CPU 1; this process, pinned to CPU 0,
   opens 1,000 WebSocket connections (autobahn clients), each saying hello
   with the same user phone, so every event goes to all 1,000 widgets.  The
   server publishes events one after another; measured: events/s and
   messages/s delivered to all clients, and the latency of one event from
   the server's send to the last of the 1,000 clients receiving it (p50,
   p99), with server CPU.
2. Webhooks: the events service with its real parts -- the SQLite outbox
   (WAL, on a temporary file), ``TreqSender`` with keep-alive connections,
   signing -- in this process (CPU 1), delivering to a twisted.web receiver
   in another process (CPU 0) that answers 200 to every request.  N events
   are published for S subscriptions (1, 10 and 100 of them, one
   extension); measured: deliveries/s from the first publish to the last
   delivery recorded in the store.

Usage::

    .venv/bin/python bench/events.py            # full run, about a minute
    .venv/bin/python bench/events.py --quick    # smoke run, ~15 s
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _pin(cpu: int) -> None:
    try:
        os.sched_setaffinity(0, {cpu % os.cpu_count()})
    except (AttributeError, OSError):
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# -- 1. widget fan-out ----------------------------------------------------------


def serve_widgets(port: int) -> None:
    """Child: the widget server; reads commands on stdin ("go N"), answers on stdout."""
    _pin(1)
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor, stdio
    from twisted.protocols.basic import LineReceiver

    from agi_app.ws.server import WidgetFactory, WidgetHub

    hub = WidgetHub(client_ids=("bench",))
    reactor.listenTCP(
        port, WidgetFactory(hub, reactor=reactor), interface="127.0.0.1", backlog=1024
    )

    class Control(LineReceiver):
        delimiter = b"\n"

        def connectionMade(self) -> None:
            self.sendLine(b"ready")

        def lineReceived(self, line: bytes) -> None:
            cmd, _, arg = line.decode().partition(" ")
            if cmd == "count":
                self.sendLine(str(hub.widgets_of("1000")).encode())
            elif cmd == "send":
                # One event after another to every widget of 1000.
                sent = []
                for i in range(int(arg)):
                    sent.append(time.time())
                    event = {"type": 2, "callID": f"c{i}", "from": "380501234567", "to": "1000"}
                    hub.send_event("1000", event)
                self.sendLine(json.dumps({"sent": sent}).encode())
            elif cmd == "cpu":
                self.sendLine(str(_cpu()).encode())
            elif cmd == "quit":
                reactor.stop()

    stdio.StandardIO(Control())
    reactor.run()


class _RawWidget:
    """A bare WebSocket client on a non-blocking socket: just enough to say
    hello and count the server's frames, so that the client side costs far
    less than the server it measures (an autobahn client per connection
    would take as much CPU as the server)."""

    __slots__ = ("sock", "buf")

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(4096)
        assert head.startswith(b"HTTP/1.1 101"), head[:80]
        self.buf = head.split(b"\r\n\r\n", 1)[1]
        self.send_text(json.dumps({"type": "hello", "client_id": "bench", "user_phone": "1000"}))
        self.sock.setblocking(False)

    def send_text(self, text: str) -> None:
        data = text.encode()
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        assert len(data) < 126
        self.sock.sendall(bytes([0x81, 0x80 | len(data)]) + mask + masked)

    def frames(self) -> list[bytes]:
        """The complete frames' payloads now in the buffer (server frames
        are unmasked and, here, shorter than 64 KiB)."""
        out = []
        buf = self.buf
        while len(buf) >= 2:
            n = buf[1] & 0x7F
            start = 2
            if n == 126:
                if len(buf) < 4:
                    break
                n, start = int.from_bytes(buf[2:4], "big"), 4
            if len(buf) < start + n:
                break
            out.append(buf[start : start + n])
            buf = buf[start + n :]
        self.buf = buf
        return out


def fanout(clients: int, events: int, rounds: int) -> dict:
    import selectors

    _pin(0)
    port = _free_port()
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve-widgets", str(port)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, text=True, bufsize=1,
    )  # fmt: skip

    def ask(line: str) -> str:
        child.stdin.write(line + "\n")
        child.stdin.flush()
        return child.stdout.readline().strip()

    try:
        assert child.stdout.readline().strip() == "ready"
        widgets = [_RawWidget(port) for _ in range(clients)]
        sel = selectors.EpollSelector()
        for w in widgets:
            sel.register(w.sock, selectors.EVENT_READ, w)
        welcomed = 0
        while welcomed < clients:  # one welcome each
            for key, _ in sel.select(5):
                w = key.data
                w.buf += w.sock.recv(65536)
                welcomed += len(w.frames())
        while int(ask("count")) < clients:
            time.sleep(0.05)
        rates, cpus, latencies = [], [], []
        total = clients * events
        for _ in range(rounds):
            last: dict[int, float] = {}
            cpu_before = float(ask("cpu"))
            t0 = time.time()
            child.stdin.write(f"send {events}\n")
            child.stdin.flush()
            got = 0
            while got < total:
                for key, _ in sel.select(10):
                    w = key.data
                    w.buf += w.sock.recv(262144)
                    now = time.time()
                    for payload in w.frames():
                        k = payload.index(b'"callID":"c') + 11
                        i = int(payload[k : payload.index(b'"', k)])
                        if now > last.get(i, 0.0):
                            last[i] = now
                        got += 1
            elapsed = time.time() - t0
            sent = json.loads(child.stdout.readline())["sent"]
            cpus.append((float(ask("cpu")) - cpu_before) / elapsed)
            rates.append(total / elapsed)
            latencies.extend(last[i] - sent[i] for i in last)
        # One event alone: how long until the last of the clients has it.
        alone = []
        for _ in range(20):
            child.stdin.write("send 1\n")
            child.stdin.flush()
            got, last_at = 0, 0.0
            while got < clients:
                for key, _ in sel.select(10):
                    w = key.data
                    w.buf += w.sock.recv(262144)
                    n = len(w.frames())
                    if n:
                        got += n
                        last_at = time.time()
            sent = json.loads(child.stdout.readline())["sent"]
            alone.append(last_at - sent[0])
        alone.sort()
        best = max(range(rounds), key=lambda k: rates[k])
        latencies.sort()
        for w in widgets:
            w.sock.close()
        return {
            "clients": clients,
            "events": events,
            "messages_per_s": rates[best],
            "events_per_s": rates[best] / clients,
            "p50_ms": 1000 * latencies[len(latencies) // 2],
            "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
            "server_cpu": cpus[best],
            "alone_p50_ms": 1000 * alone[len(alone) // 2],
            "alone_max_ms": 1000 * alone[-1],
        }
    finally:
        try:
            ask("quit")
        except (BrokenPipeError, ValueError):
            pass
        child.wait(timeout=5)


# -- 2. webhooks ----------------------------------------------------------------


def serve_receiver(port: int) -> None:
    """Child: a twisted.web receiver answering 200, counting requests."""
    _pin(0)
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor
    from twisted.web import resource, server

    class Ok(resource.Resource):
        isLeaf = True

        def render(self, request):
            return b"ok"

    site = server.Site(Ok())
    site.log = lambda request: None  # no access log in a benchmark
    reactor.listenTCP(port, site, interface="127.0.0.1", backlog=1024)
    print("ready", flush=True)
    reactor.run()


def webhooks(events: int, subs: int) -> dict:
    port = _free_port()
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve-receiver", str(port)],
        stdout=subprocess.PIPE, cwd=ROOT, text=True,
    )  # fmt: skip
    assert child.stdout.readline().strip() == "ready"
    code = f"""
import sys, time, json, tempfile, os
sys.path.insert(0, {str(ROOT)!r})
os.sched_setaffinity(0, {{1 % os.cpu_count()}})
from twisted.internet import epollreactor
epollreactor.install()
from twisted.internet import reactor, defer, task
from agi_app.store import SQLiteStore
from agi_app.events.delivery import TreqSender, DeliverySettings
from agi_app.events.service import EventService
from agi_app.netguard import TargetGuard
folder = tempfile.mkdtemp()
store = SQLiteStore(os.path.join(folder, "bench.sqlite3"), reactor=reactor)
store.open()
loopback = TargetGuard(["127.0.0.0/8"])  # the receiver is on 127.0.0.1
sender = TreqSender(reactor, timeout=10, per_host={max(4, min(subs, 100))}, guard=loopback)
service = EventService(store, send=sender, clock=reactor, settings=DeliverySettings(),
                       guard=loopback)
out = {{}}
async def run():
    await service.start()
    for i in range({subs}):
        await service.subscribe("1000", url="http://127.0.0.1:{port}/hook?s=%d" % i,
                                method="POST", event_type="hangup")
    fields = {{"CallID": "c", "CallAPIID": "c", "CallFlow": "in", "CallerIDNum": "380501234567",
               "CalledNumber": "1000", "CalledExtension": "1000", "CallStatus": "ANSWER",
               "Duration": "42"}}
    t0 = time.perf_counter()
    for n in range({events}):
        await service.publish("1000", "hangup", fields)
    t_pub = time.perf_counter() - t0
    total = {events} * {subs}
    while service.deliverer.stats["delivered"] < total:
        await task.deferLater(reactor, 0.01, lambda: None)
    elapsed = time.perf_counter() - t0
    # the store writes of the last deliveries are done when the outbox is empty
    while await store.subscriptions_with_pending():
        await task.deferLater(reactor, 0.01, lambda: None)
    out.update(deliveries=total, seconds=elapsed, per_s=total / elapsed,
               publish_per_s={events} / t_pub, attempts=service.deliverer.stats["attempts"])
def main():
    d = defer.ensureDeferred(run())
    d.addErrback(lambda f: (f.printTraceback(), out.setdefault("error", str(f.value))))
    d.addBoth(lambda _: reactor.stop())
reactor.callWhenRunning(main)
reactor.run()
print(json.dumps(out))
"""
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=600, cwd=ROOT)  # fmt: skip
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if not lines:
            return {"error": proc.stderr[-2000:]}
        return {"subscriptions": subs, **json.loads(lines[-1])}
    finally:
        child.terminate()
        child.wait(timeout=5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller smoke run")
    parser.add_argument("--serve-widgets", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-receiver", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--fanout-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_widgets:
        serve_widgets(args.serve_widgets)
        return 0
    if args.serve_receiver:
        serve_receiver(args.serve_receiver)
        return 0
    if args.fanout_only:
        print(json.dumps(fanout(1000, 20 if args.quick else 100, 2 if args.quick else 3)))
        return 0
    print(f"# events benchmark  ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f})")
    # The fan-out runs in its own process: it installs the epoll reactor.
    out = subprocess.run(
        [sys.executable, __file__, "--fanout-only"] + (["--quick"] if args.quick else []),
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    fan = json.loads(lines[-1]) if lines else {"error": out.stderr[-2000:]}
    print("\n## widget fan-out (one event -> every widget of one phone)")
    if "error" in fan:
        print("error:", fan["error"])
    else:
        print(f"clients {fan['clients']}, events per round {fan['events']}")
        print(
            f"  {fan['messages_per_s']:,.0f} messages/s = {fan['events_per_s']:,.1f} events/s "
            f"to all {fan['clients']} clients; server CPU {100 * fan['server_cpu']:.0f} %"
        )
        print(
            f"  back to back, event to the last client: p50 {fan['p50_ms']:.1f} ms, "
            f"p99 {fan['p99_ms']:.1f} ms"
        )
        print(
            f"  one event alone, to the last client: p50 {fan['alone_p50_ms']:.1f} ms, "
            f"max {fan['alone_max_ms']:.1f} ms (of 20)"
        )
    print("\n## webhook deliveries (SQLite outbox + treq, receiver in another process)")
    events = 300 if args.quick else 2000
    for subs in (1, 10, 100):
        n = max(events // subs, 20)
        r = webhooks(n, subs)
        if "error" in r:
            print(f"subscriptions {subs}: error {r['error']}")
            continue
        print(
            f"  {subs:>3} subscriptions x {n:>5} events: {r['per_s']:,.0f} deliveries/s "
            f"({r['deliveries']} in {r['seconds']:.2f} s; publishing {r['publish_per_s']:,.0f} "
            f"events/s)"
        )
    print(f"\n(load after: {os.getloadavg()[0]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
