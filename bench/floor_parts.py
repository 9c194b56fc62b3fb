"""The floors of what agi_app does per call besides its AMI link, for
``bench/call_load.py --floor``: its HTTP answer, its FastAGI session and
its store writes, each a bare process of its own doing just that work
(``bench/http_floor.py``, ``bench/fastagi_floor.py``, ``bench/store_floor.py``).

:func:`start` starts the three processes beside agi_app; :func:`run`,
right after the load window of a rate, gives them as many calls as agi_app
took at the same rate, all three at once, and returns the CPU each used
(utime + stime from ``/proc``, as for agi_app), with anything that did not
answer as it should.  The FastAGI driver plays Asterisk; its CPU is not
counted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

#: the store's transactions per call of agi_app's writer at each rate
#: (``call_load.py --rates R --breakdown``: store batches / calls placed),
#: what :func:`run` gives ``store_floor.py`` for the rate nearest to the
#: one measured (a busier machine groups more: 4.5 at 50 calls/s in one run)
BATCHES_PER_CALL = {25.0: 10.2, 50.0: 6.5}

#: the parts, in the order they are printed
PARTS = ("http", "fastagi", "store")


def batches_for(rate: float, table: dict[float, float] = BATCHES_PER_CALL) -> float:
    """The store transactions per call for ``rate``: the figure of the
    nearest rate in ``table`` (the lower one on a tie)."""
    return table[min(sorted(table), key=lambda r: abs(r - rate))]


def makecall_params(n: int) -> dict[str, str]:
    """The query of call ``n``'s makeCall, as ``call_load.py`` sends it to agi_app."""
    from agi_app.sandbox.pbx_config import OPERATORS

    return {"sip": OPERATORS[n % len(OPERATORS)], "phone": f"38063{n % 10_000_000:07d}",
            "order_id": f"o{n}", "external_key": f"k{n}-{os.getpid()}"}  # fmt: skip


def answer_ok(code: int, body: bytes) -> bool:
    """Whether an answer is the floor's makeCall answer: 200, agi_app's size
    and a ``call_id``."""
    if code != 200 or len(body) != 37:
        return False
    try:
        return bool(json.loads(body).get("call_id"))
    except ValueError:
        return False


@dataclass
class Parts:
    """The three floor processes, started by :func:`start`."""

    http: subprocess.Popen
    http_port: int
    fastagi: subprocess.Popen
    fastagi_port: int
    store: subprocess.Popen
    #: the store floor's writer thread (its CPU is the store's floor)
    store_writer: int = 0
    #: bench/shared_floor.py: the HTTP and FastAGI floors in one process
    shared: subprocess.Popen | None = None
    shared_ports: tuple[int, int] = (0, 0)

    @property
    def pids(self) -> dict[str, int]:
        return {"http": self.http.pid, "fastagi": self.fastagi.pid, "store": self.store.pid}

    def stop(self) -> None:
        if self.store.poll() is None:
            try:
                self.store.stdin.write("quit\n")  # type: ignore[union-attr]
                self.store.stdin.flush()  # type: ignore[union-attr]
            except OSError:
                pass
        procs = [self.http, self.fastagi, self.store]
        if self.shared is not None:
            procs.append(self.shared)
        for proc in procs:
            if proc.poll() is None and proc is not self.store:
                proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _first_line(proc: subprocess.Popen, what: str) -> str:
    line = proc.stdout.readline()  # type: ignore[union-attr]
    if not line:
        raise SystemExit(f"floor: {what} did not start (exit {proc.wait()})")
    return line.strip()


def start(folder: Path, env: dict[str, str] | None = None) -> Parts:
    """Start the HTTP and FastAGI floor servers (any free loopback port) and
    the store floor (its file in ``folder``); returns once all are ready."""
    common: dict[str, Any] = dict(cwd=HERE.parent, env=env, stdout=subprocess.PIPE, text=True)
    procs: list[subprocess.Popen] = []
    try:
        http = subprocess.Popen([sys.executable, str(HERE / "http_floor.py"), "--port", "0"],
                                stdin=subprocess.DEVNULL, **common)  # fmt: skip
        procs.append(http)
        fastagi = subprocess.Popen(
            [sys.executable, str(HERE / "fastagi_floor.py"), "serve", "--port", "0"],
            stdin=subprocess.DEVNULL, **common,
        )  # fmt: skip
        procs.append(fastagi)
        store = subprocess.Popen(
            [sys.executable, str(HERE / "store_floor.py"), str(folder / "store_floor.sqlite3")],
            stdin=subprocess.PIPE, **common,
        )  # fmt: skip
        procs.append(store)
        shared = subprocess.Popen([sys.executable, str(HERE / "shared_floor.py")],
                                  stdin=subprocess.DEVNULL, **common)  # fmt: skip
        procs.append(shared)
        http_port = int(_first_line(http, "http_floor.py").split()[-1])
        fastagi_port = int(_first_line(fastagi, "fastagi_floor.py").split()[-1])
        ready = _first_line(store, "store_floor.py").split()
        if ready[:1] != ["ready"] or len(ready) != 2:
            raise SystemExit(f"floor: store_floor.py did not start ({' '.join(ready)})")
        shared_ports = tuple(map(int, _first_line(shared, "shared_floor.py").split()[1:3]))
    except BaseException:
        for proc in procs:
            proc.kill()
            proc.wait()
        raise
    return Parts(http, http_port, fastagi, fastagi_port, store, int(ready[1]), shared,
                 shared_ports)  # type: ignore[arg-type]  # fmt: skip


async def run(reactor: Any, parts: Parts, rate: float, calls: int, first: int,
              cpu: Callable[[int], float], get: Callable[..., Any], delays: float = 1.0,
              ) -> tuple[dict[str, float], list[str]]:  # fmt: skip
    """``calls`` calls' worth of work at ``rate`` for each part, at once:
    makeCall requests ``first..`` through ``get`` (``treq.get`` with the
    load's connection pool), FastAGI sessions from a driver process, the
    store's writes.  Returns each part's CPU seconds over that window
    (``cpu(pid)`` of each process; for the store, its writer thread's, and
    the whole process's as ``store process``; then the same HTTP and
    FastAGI work again for :mod:`shared_floor`, both in one process, as
    ``http+fastagi shared``) and a line per problem (an
    answer that was not right, a session that did not finish, rows that
    were not written).  ``delays`` scales the FastAGI driver's waits
    before answering Playback and Dial (0: none)."""
    from twisted.internet import defer, task

    problems: list[str] = []

    async def http(port: int, label: str = "HTTP floor") -> None:
        start_at = time.monotonic()
        pending = []

        async def one(n: int) -> bool:
            try:
                r = await get(f"http://127.0.0.1:{port}/api/makeCall.json",
                              params=makecall_params(n))  # fmt: skip
                return answer_ok(r.code, await r.content())
            except Exception:  # noqa: BLE001 - counted as a problem
                return False

        for i in range(calls):
            delay = start_at + i / rate - time.monotonic()
            if delay > 0:
                await task.deferLater(reactor, delay, lambda: None)
            pending.append(defer.ensureDeferred(one(first + i)))
        good = sum(await defer.gatherResults(pending))
        if good != calls:
            problems.append(f"{label}: {calls - good} of {calls} answers not right")

    async def fastagi(port: int, label: str = "FastAGI floor") -> None:
        driver = subprocess.Popen(
            [sys.executable, str(HERE / "fastagi_floor.py"), "drive", "--port",
             str(port), "--calls", str(calls), "--rate", f"{rate:g}",
             "--scale", f"{delays:g}"],
            cwd=HERE.parent, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        out, _ = await _in_thread(reactor, driver.communicate)
        if driver.returncode != 0:
            problems.append(f"{label}: {out.strip()} (of {calls})")

    async def store() -> None:
        stdin, stdout = parts.store.stdin, parts.store.stdout
        assert stdin is not None and stdout is not None
        stdin.write(f"run {calls} {rate:g} {batches_for(rate):g}\n")
        stdin.flush()
        line = await _in_thread(reactor, stdout.readline)
        if not line.startswith("done "):
            problems.append(f"store floor: {line.strip() or 'no answer'}")

    def now() -> dict[str, float]:
        out = {name: cpu(pid) for name, pid in parts.pids.items()}
        out["store process"] = out["store"]
        out["store"] = thread_cpu(parts.store.pid, parts.store_writer)
        return out

    cpu0 = now()
    await defer.gatherResults([defer.ensureDeferred(http(parts.http_port)),
                               defer.ensureDeferred(fastagi(parts.fastagi_port)),
                               defer.ensureDeferred(store())])  # fmt: skip
    cpu1 = now()
    used = {name: cpu1[name] - cpu0[name] for name in cpu0}
    if parts.shared is not None:
        http_port, fastagi_port = parts.shared_ports
        shared0 = cpu(parts.shared.pid)
        await defer.gatherResults([
            defer.ensureDeferred(http(http_port, "shared floor, HTTP")),
            defer.ensureDeferred(fastagi(fastagi_port, "shared floor, FastAGI")),
        ])  # fmt: skip
        used["http+fastagi shared"] = cpu(parts.shared.pid) - shared0
    return used, problems


def _in_thread(reactor: Any, fn: Callable[[], Any]) -> Any:
    """A Deferred of ``fn()`` run on a daemon thread of its own (a blocking
    read of a child's pipe; the reactor's thread pool would keep a process
    whose reactor never shuts down, such as a test run's, from exiting)."""
    import threading

    from twisted.internet.defer import Deferred

    d: Deferred = Deferred()

    def work() -> None:
        try:
            result = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the Deferred
            reactor.callFromThread(d.errback, e)
        else:
            reactor.callFromThread(d.callback, result)

    threading.Thread(target=work, name="floor-parts-read", daemon=True).start()
    return d


def thread_cpu(pid: int, tid: int) -> float:
    """utime + stime of one thread, from ``/proc/PID/task/TID/stat``."""
    with open(f"/proc/{pid}/task/{tid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
