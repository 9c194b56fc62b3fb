"""FastAGI throughput: agi_app's Twisted server against panoramisk's asyncio one.

The load generator plays Asterisk: it connects, sends a realistic environment
block (22 ``agi_*`` lines plus ``agi_arg_1..2``), then answers every command
line with a correct ``200`` reply until the server closes the connection.
Both servers run the same script -- GET VARIABLE, SET VARIABLE, EXEC
Playback, VERBOSE, then ``SET VARIABLE AGI_APP_RESULT OK`` (which agi_app
sends after every script; the panoramisk script sends it explicitly) -- each
in its own process pinned to one core, with the generator pinned to the
other.

Measured per server, at 1, 100 and 1000 concurrent sessions:
  * sessions/s completed;
  * command round trip, p50 and p99: from the generator writing the
    environment or a reply to it reading the next command line;
  * server and generator CPU (the generator must stay well below 100 % for
    the figures to be the server's), and the CPU anything else took on the
    server's core (the "other" column: non-zero means a disturbed round);
and in a fresh server process: resident memory per open session (1000
sessions held mid-script, waiting for the reply to their first command),
three hold/release cycles to show whether memory stays flat.

Usage::

    .venv/bin/python bench/agi_throughput.py            # full run, under 2 minutes
    .venv/bin/python bench/agi_throughput.py --quick    # smoke run, ~20 s
"""

from __future__ import annotations

import argparse
import errno
import os
import resource
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = "bench"
ENV_TEMPLATE = (
    "agi_network: yes\n"
    "agi_network_script: bench\n"
    "agi_request: agi://127.0.0.1:4573/bench\n"
    "agi_channel: PJSIP/101-{n:08x}\n"
    "agi_language: en\n"
    "agi_type: PJSIP\n"
    "agi_uniqueid: 1764105600.{n}\n"
    "agi_version: 22.10.1\n"
    "agi_callerid: 101\n"
    "agi_calleridname: Operator One\n"
    "agi_callingpres: 0\n"
    "agi_callingani2: 0\n"
    "agi_callington: 0\n"
    "agi_callingtns: 0\n"
    "agi_dnid: 380639920000\n"
    "agi_rdnis: unknown\n"
    "agi_context: agi-app-operator\n"
    "agi_extension: s\n"
    "agi_priority: 2\n"
    "agi_enhanced: 0.0\n"
    "agi_accountcode: \n"
    "agi_threadid: 140234567890\n"
    "agi_arg_1: c-{n}\n"
    "agi_arg_2: 380639920000\n"
    "\n"
)
SERVERS = {"agi_app": 5, "panoramisk": 5, "twisted_floor": 5}  # commands per session
SERVE = {"agi_app": "serve_agi_app", "panoramisk": "serve_panoramisk",
         "twisted_floor": "serve_twisted_floor"}
LINGER_RST = struct.pack("ii", 1, 0)


# -- the servers (run in their own process) --------------------------------

def _pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and cpu < os.cpu_count():
        os.sched_setaffinity(0, {cpu})


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve_agi_app(cpu: int) -> None:
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    sys.path.insert(0, str(ROOT))
    from agi_app.agi import FastAGIFactory, ScriptRegistry

    # as in production: log observers started, warnings and up written out
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr),
                              [LogLevelFilterPredicate(LogLevel.warn)])],
        redirectStandardIO=False,
    )
    registry = ScriptRegistry()

    @registry.script(SCRIPT)
    async def bench(agi):
        call = await agi.get_variable("CALL_ID")
        await agi.set_variable("AGI_APP_CALL", call)
        await agi.exec_("Playback", "agi_app/please-wait")
        await agi.verbose(f"call {call} done", 3)

    factory = FastAGIFactory(registry, reactor, 30.0)
    port = reactor.listenTCP(0, factory, backlog=2048, interface="127.0.0.1")
    _pin(cpu)
    print(f"READY {port.getHost().port}", flush=True)
    reactor.run()


def serve_twisted_floor(cpu: int) -> None:
    """The same conversation from a bare Twisted line protocol: no Deferreds,
    no coroutine, no timeouts, no checks.  Not a FastAGI server -- the cost of
    the reactor and TCP alone, measured on the same machine at the same
    moment, i.e. the ceiling agi_app's figures are to be read against."""
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory
    from twisted.protocols.basic import LineOnlyReceiver

    script = [
        b'GET VARIABLE "CALL_ID"\n',
        b'SET VARIABLE "AGI_APP_CALL" "c-42"\n',
        b'EXEC Playback "agi_app/please-wait"\n',
        b'VERBOSE "call c-42 done" "3"\n',
        b'SET VARIABLE "AGI_APP_RESULT" "OK"\n',
    ]

    class Floor(LineOnlyReceiver):
        delimiter = b"\n"

        def connectionMade(self):
            self.env = {}
            self.step = -1

        def lineReceived(self, line):
            if self.step < 0:
                if line:
                    key, _, value = line.decode().partition(": ")
                    self.env[key] = value
                    return
            self.step += 1
            if self.step < len(script):
                self.transport.write(script[self.step])
            else:
                self.transport.loseConnection()

    factory = Factory.forProtocol(Floor)
    factory.noisy = False
    port = reactor.listenTCP(0, factory, backlog=2048, interface="127.0.0.1")
    _pin(cpu)
    print(f"READY {port.getHost().port}", flush=True)
    reactor.run()


def serve_panoramisk(cpu: int) -> None:
    import asyncio

    from panoramisk.fast_agi import Application

    async def bench(request):
        r = await request.send_command('GET VARIABLE "CALL_ID"')
        call = r["result"][1]
        await request.send_command(f'SET VARIABLE "AGI_APP_CALL" "{call}"')
        await request.send_command('EXEC Playback "agi_app/please-wait"')
        await request.send_command(f'VERBOSE "call {call} done" 3')
        # what agi_app sends after every script, so both servers do the same work
        await request.send_command('SET VARIABLE "AGI_APP_RESULT" "OK"')


    async def main():
        app = Application()
        app.add_route(SCRIPT, bench)
        server = await asyncio.start_server(app.handler, "127.0.0.1", 0, backlog=2048)
        _pin(cpu)
        print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# -- the load generator ----------------------------------------------------

CONNECTING, RUNNING, HELD = 0, 1, 2
REPLY_GET = b"200 result=1 (c-42)\n"
REPLY_EXEC = b"200 result=0\n"
REPLY_OK = b"200 result=1\n"


class Conn:
    __slots__ = ("sock", "state", "buf", "t", "ncmd", "hold", "held_reply")

    def __init__(self, sock: socket.socket, hold: bool):
        self.sock = sock
        self.state = CONNECTING
        self.buf = b""
        self.t = 0.0
        self.ncmd = 0
        self.hold = hold
        self.held_reply = b""


class Generator:
    """Speaks Asterisk's side of FastAGI over raw non-blocking sockets and
    epoll: a few system calls and a bytes split per event, so one core of it
    outruns one core of either server."""

    def __init__(self, port: int, commands: int):
        self.addr = ("127.0.0.1", port)
        self.commands = commands
        self.ep = select.epoll()
        self.conns: dict[int, Conn] = {}
        self.n = 0
        self.completed = 0
        self.errors = 0
        self.samples: list[float] = []
        self.recording = False
        self.target = 0
        self.held = 0

    def _open(self, hold: bool = False) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rc = s.connect_ex(self.addr)
        if rc not in (0, errno.EINPROGRESS):
            s.close()
            self.errors += 1
            return
        fd = s.fileno()
        self.conns[fd] = Conn(s, hold)
        self.ep.register(fd, select.EPOLLOUT)

    def _close(self, fd: int, c: Conn, ok: bool) -> None:
        self.ep.unregister(fd)
        del self.conns[fd]
        # RST instead of FIN: the server already closed its side, and this
        # keeps tens of thousands of loopback connections out of TIME_WAIT
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        c.sock.close()
        if ok:
            self.completed += 1
        else:
            self.errors += 1

    def _refill(self) -> None:
        while len(self.conns) - self.held < self.target:
            self._open()

    def step(self, timeout: float) -> None:
        events = self.ep.poll(timeout)
        now = time.perf_counter()
        conns = self.conns
        samples = self.samples if self.recording else None
        commands = self.commands
        for fd, ev in events:
            c = conns.get(fd)
            if c is None:
                continue
            if c.state == CONNECTING:
                if ev & (select.EPOLLERR | select.EPOLLHUP):
                    self._close(fd, c, False)
                    continue
                self.n += 1
                c.sock.send(ENV_TEMPLATE.format(n=self.n).encode())
                c.t = now
                c.state = RUNNING
                self.ep.modify(fd, select.EPOLLIN)
                continue
            try:
                data = c.sock.recv(65536)
            except ConnectionError:
                data = b""
            if not data:
                self._close(fd, c, c.ncmd == commands and not c.buf)
                continue
            if c.buf:
                data = c.buf + data
            lines = data.split(b"\n")
            c.buf = lines.pop()
            out = []
            for line in lines:
                c.ncmd += 1
                if samples is not None:
                    samples.append(now - c.t)
                head = line[:4]
                if head == b"GET ":
                    reply = REPLY_GET
                elif head == b"EXEC":
                    reply = REPLY_EXEC
                else:
                    reply = REPLY_OK
                if c.hold:
                    c.hold = False
                    c.state = HELD
                    c.held_reply = reply
                    self.held += 1
                else:
                    out.append(reply)
            if out:
                c.sock.send(b"".join(out))
                c.t = now
        if self.target:
            self._refill()

    def run_level(self, concurrency: int, warmup: float, duration: float,
                  probe: Callable[[], tuple[float, float]] | None = None) -> dict:
        """Keep ``concurrency`` sessions going; measure for ``duration`` s.
        ``probe()`` -> (server CPU s, server core busy s) is read at both ends
        of the measured window."""
        self.target = concurrency
        self._refill()
        end_warm = time.perf_counter() + warmup
        while time.perf_counter() < end_warm:
            self.step(0.05)
        done0, err0 = self.completed, self.errors
        self.samples = []
        self.recording = True
        p0 = probe() if probe else (0.0, 0.0)
        cpu0, t0 = time.process_time(), time.perf_counter()
        t_end = t0 + duration
        while time.perf_counter() < t_end:
            self.step(0.05)
        t1, cpu1 = time.perf_counter(), time.process_time()
        p1 = probe() if probe else (0.0, 0.0)
        self.recording = False
        done = self.completed - done0
        errors = self.errors - err0
        self.drain()
        wall = t1 - t0
        srv = (p1[0] - p0[0]) / wall
        return {
            "sessions_per_s": done / wall,
            "sessions": done,
            "errors": errors,
            "p50_ms": percentile(self.samples, 50) * 1000,
            "p99_ms": percentile(self.samples, 99) * 1000,
            "gen_cpu": (cpu1 - cpu0) / wall,
            "srv_cpu": srv,
            # whatever else ran on the server's core: non-zero means the
            # sessions/s of this round are low
            "other_cpu": max(0.0, (p1[1] - p0[1]) / wall - srv),
            # server CPU per session: much less sensitive to a busy machine
            "cpu_us": (p1[0] - p0[0]) / done * 1e6 if done else float("nan"),
            "wall": wall,
        }

    def drain(self, limit: float = 30.0) -> None:
        """Start no new sessions; let the open ones finish."""
        self.target = 0
        end = time.perf_counter() + limit
        while self.conns and time.perf_counter() < end:
            self.step(0.05)

    def hold(self, count: int, limit: float = 30.0) -> None:
        """Open ``count`` sessions and leave each waiting for its first reply."""
        self.held = 0
        for _ in range(count):
            self._open(hold=True)
        end = time.perf_counter() + limit
        while self.held < count and time.perf_counter() < end:
            self.step(0.05)
        if self.held < count:
            raise RuntimeError(f"only {self.held} of {count} sessions reached the hold point")

    def release(self) -> None:
        """Answer the held sessions and let them finish."""
        for c in self.conns.values():
            if c.state == HELD:
                c.state = RUNNING
                c.sock.send(c.held_reply)
                c.t = time.perf_counter()
        self.held = 0
        self.drain()


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
    return ordered[k]


# -- orchestration ---------------------------------------------------------

class Server:
    """A server subprocess; reports its port on stdout once listening."""

    def __init__(self, kind: str, cpu: int):
        import psutil

        self.kind = kind
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", kind, "--cpu", str(cpu)],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=str(ROOT), text=True,
        )
        line = self.proc.stdout.readline()
        if not line.startswith("READY "):
            self.proc.kill()
            raise RuntimeError(f"{kind} server did not start: {line!r}")
        self.port = int(line.split()[1])
        self.ps = psutil.Process(self.proc.pid)

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def core_busy(cpu: int) -> float:
    """Seconds CPU ``cpu`` has spent busy since boot."""
    import psutil

    t = psutil.cpu_times(percpu=True)[cpu]
    return t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0)


def measure_throughput(kinds: list[str], levels: list[int], rounds: int, warmup: float,
                       duration: float, server_cpu: int) -> list[dict]:
    """Both servers run side by side (the idle one costs nothing) and the
    rounds interleave them, so a disturbance on the machine hits both alike;
    the best round of each (server, level) is kept."""
    servers: dict[str, Server] = {}
    best: dict[tuple[str, int], dict] = {}
    try:
        for kind in kinds:
            servers[kind] = Server(kind, server_cpu)
        gens = {kind: Generator(s.port, SERVERS[kind]) for kind, s in servers.items()}
        for gen in gens.values():
            gen.run_level(10, 0.2, 0.3)  # imports, first allocations
        for level in levels:
            for _ in range(rounds):
                for kind, server in servers.items():
                    def probe(server: Server = server) -> tuple[float, float]:
                        return server.cpu(), core_busy(server_cpu)

                    row = gens[kind].run_level(level, warmup, duration, probe)
                    row["level"] = level
                    row["server"] = kind
                    row["rss_mib"] = server.rss() / 2**20
                    print(format_row(row), flush=True)
                    key = (kind, level)
                    if key in best:
                        # best sessions/s, and separately the lowest CPU per session
                        low = min(best[key]["cpu_us_best"], row["cpu_us"])
                        if row["sessions_per_s"] > best[key]["sessions_per_s"]:
                            best[key] = row
                        best[key]["cpu_us_best"] = low
                    else:
                        best[key] = row
                        row["cpu_us_best"] = row["cpu_us"]
    finally:
        for server in servers.values():
            server.stop()
    return [best[(kind, level)] for kind in kinds for level in levels]


def measure_memory(kind: str, held: int, cycles: int, server_cpu: int) -> dict:
    """Resident memory per open session, in a fresh server process."""
    server = Server(kind, server_cpu)
    try:
        gen = Generator(server.port, SERVERS[kind])
        gen.run_level(1, 0.1, 0.3)  # warm up one session at a time
        time.sleep(0.2)
        base = server.rss()
        peaks = []
        for _ in range(cycles):
            gen.hold(held)
            time.sleep(0.2)
            peaks.append(server.rss())
            gen.release()
        after = server.rss()
    finally:
        server.stop()
    return {
        "server": kind,
        "base_mib": base / 2**20,
        "per_session_kib": (peaks[0] - base) / held / 1024,
        "peaks_mib": [p / 2**20 for p in peaks],
        "after_mib": after / 2**20,
        "growth_kib": (peaks[-1] - peaks[0]) / 1024,
    }


def format_row(r: dict, best_cpu: bool = False) -> str:
    cpu_us = r["cpu_us_best"] if best_cpu else r["cpu_us"]
    return (f"{r['server']:<13} {r['level']:>5} {r['sessions_per_s']:>11,.0f} "
            f"{r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['srv_cpu'] * 100:>7.0f}% "
            f"{r['other_cpu'] * 100:>5.0f}% {r['gen_cpu'] * 100:>7.0f}% {cpu_us:>9.0f} "
            f"{1e6 / cpu_us:>10,.0f} {r['rss_mib']:>7.1f} {r['errors']:>6}")


HEADER = (f"{'server':<13} {'conc':>5} {'sessions/s':>11} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'srv CPU':>8} {'other':>6} {'gen CPU':>8} {'us/sess':>9} {'per core':>10} "
          f"{'RSS MiB':>7} {'errors':>6}")


def verdicts(rows: list[dict], mem: dict[str, dict], levels: list[int], hold: int) -> list[str]:
    by = {(r["server"], r["level"]): r["sessions_per_s"] for r in rows}
    us = {(r["server"], r["level"]): r["cpu_us_best"] for r in rows}
    kinds = {r["server"] for r in rows}
    out = []
    if {"agi_app", "panoramisk"} <= kinds:
        ratio = {lv: by[("agi_app", lv)] / by[("panoramisk", lv)] for lv in levels}
        cpu = {lv: us[("panoramisk", lv)] / us[("agi_app", lv)] for lv in levels}
        ahead = all(r > 1 for r in ratio.values())
        out.append(
            f"ahead of panoramisk at every level: {'yes' if ahead else 'NO'} "
            f"(sessions/s {', '.join(f'{lv}: x{r:.2f}' for lv, r in ratio.items())}; "
            f"CPU per session {', '.join(f'{lv}: x{r:.2f}' for lv, r in cpu.items())})"
        )
    if "agi_app" in kinds:
        top = max(by[("agi_app", lv)] for lv in levels)
        capacity = 1e6 / min(us[("agi_app", lv)] for lv in levels)
        verdict = "yes" if top >= 5000 else "by CPU per session" if capacity >= 5000 else "NO"
        out.append(f">= 5,000 sessions/s: {verdict} (best measured {top:,.0f}/s; one core's "
                   f"capacity from server CPU per session {capacity:,.0f}/s)")
    if {"agi_app", "twisted_floor"} <= kinds:
        share = ", ".join(f"{lv}: {us[('twisted_floor', lv)] / us[('agi_app', lv)]:.0%}"
                          for lv in levels)
        out.append(f"(agi_app's capacity as a share of the bare Twisted line protocol's: {share})")
    if "agi_app" in mem:
        m = mem["agi_app"]
        # flat: holding the same sessions again needs no more memory than the
        # first time, allocator noise aside
        flat = abs(m["growth_kib"]) <= 0.1 * m["per_session_kib"] * hold + 512
        out.append(f"flat memory: {'yes' if flat else 'NO'} ({m['growth_kib']:+.0f} KiB "
                   "between the first and last hold cycle)")
    gen_max = max(r["gen_cpu"] for r in rows)
    out.append(f"generator CPU at most {gen_max * 100:.0f}% of its core")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--levels", default="1,100,1000", help="concurrency levels")
    parser.add_argument("--duration", type=float, default=None, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per level (best kept)")
    parser.add_argument("--servers", default="agi_app,panoramisk,twisted_floor")
    parser.add_argument("--hold", type=int, default=1000, help="sessions held open for memory")
    parser.add_argument("--serve", choices=sorted(SERVERS), help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    _raise_fd_limit()
    if args.serve:
        globals()[SERVE[args.serve]](args.cpu)
        return 0

    ncpu = os.cpu_count() or 1
    server_cpu, gen_cpu = (1, 0) if ncpu >= 2 else (0, 0)
    _pin(gen_cpu)
    levels = [int(x) for x in args.levels.split(",")]
    servers = [s for s in args.servers.split(",") if s]
    duration = args.duration or (1.0 if args.quick else 2.5)
    rounds = args.rounds or (1 if args.quick else 3)
    warmup = 0.3 if args.quick else 0.5
    cycles = 2 if args.quick else 3
    hold = min(args.hold, 200) if args.quick else args.hold

    load = os.getloadavg()[0]
    print(f"FastAGI throughput: {ncpu} CPUs, servers pinned to CPU {server_cpu}, generator to "
          f"CPU {gen_cpu}; {rounds} round(s) of {duration:g} s per level after {warmup:g} s "
          f"warm-up, best kept; load average {load:.2f}")
    if load > 0.5:
        print("warning: the machine is busy; figures will be low and noisy")
    print(HEADER)
    rows = measure_throughput(servers, levels, rounds, warmup, duration, server_cpu)
    if rounds > 1:
        print(f"\nbest of {rounds} rounds:")
        print(HEADER)
        for row in rows:
            print(format_row(row, best_cpu=True))

    print()
    print(f"memory: {hold} sessions held mid-script, {cycles} hold/release cycles")
    mem = {}
    for kind in servers:
        if kind == "twisted_floor":
            continue
        m = measure_memory(kind, hold, cycles, server_cpu)
        mem[kind] = m
        peaks = " / ".join(f"{p:.1f}" for p in m["peaks_mib"])
        print(f"{kind:<11} base {m['base_mib']:.1f} MiB, held peaks {peaks} MiB, "
              f"after {m['after_mib']:.1f} MiB: {m['per_session_kib']:.1f} KiB per open "
              f"session, growth over cycles {m['growth_kib']:+.0f} KiB")

    print()
    print("targets: ahead of panoramisk at every level; >= 5,000 sessions/s; flat memory")
    for line in verdicts(rows, mem, levels, hold):
        print("  " + line)
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
