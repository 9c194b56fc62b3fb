"""Run ``agi-app`` with the CPU time of its main entry points counted.

``bench/call_load.py --breakdown`` starts agi_app through this file: it
wraps the methods where work enters the process (the AMI, FastAGI and HTTP
protocols' ``dataReceived``, the AMI event dispatch and its subscribers,
the store's batches on the worker thread and their callbacks on the
reactor) with ``time.thread_time()`` (the CPU of the calling thread), runs
``agi_app.cli.main`` unchanged, and at exit writes one line per entry point
to the file named by ``CALL_LOAD_BREAKDOWN``: seconds, calls, microseconds
per call.  Nested entries are included in their callers (the AMI receive
path includes the parser and the subscribers).  With
``CALL_LOAD_CPROFILE=FILE`` in the environment it also runs cProfile on
the reactor thread and writes its stats to FILE at exit.
"""

from __future__ import annotations

import atexit
import os
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.web.http import HTTPChannel  # noqa: E402

from agi_app.agi.protocol import FastAGIProtocol  # noqa: E402
from agi_app.ami.message import AMIParser  # noqa: E402
from agi_app.ami.protocol import AMIProtocol  # noqa: E402
from agi_app.ami.service import AMIService  # noqa: E402
from agi_app.calls.lifecycle import Lifecycle  # noqa: E402
from agi_app.live.operators import OperatorTracker  # noqa: E402
from agi_app.live.tracker import CallTracker  # noqa: E402
from agi_app.store.engine import SQLiteEngine  # noqa: E402

spent: Counter = Counter()
calls: Counter = Counter()

ENTRIES = (
    (AMIProtocol, "dataReceived", "AMI receive path (all of it)"),
    (AMIParser, "feed", "  AMI parser"),
    (AMIService, "_on_event", "  AMI event dispatch and subscribers"),
    (CallTracker, "_on_event", "    call tracker"),
    (Lifecycle, "_on_event", "    call lifecycle"),
    (OperatorTracker, "_on_event", "    operators"),
    (FastAGIProtocol, "dataReceived", "FastAGI (and the scripts it resumes)"),
    (HTTPChannel, "dataReceived", "HTTP API (parsing, routing, handlers)"),
    (SQLiteEngine, "_batch", "store batches (worker thread)"),
    (SQLiteEngine, "_delivered", "store results (callbacks it resumes)"),
)


def wrap(cls: type, name: str, label: str) -> None:
    original = getattr(cls, name, None)
    if original is None:  # an older agi_app without this entry point
        return

    def counted(self, *args, **kwargs):
        started = time.thread_time()
        try:
            return original(self, *args, **kwargs)
        finally:
            spent[label] += time.thread_time() - started
            calls[label] += 1

    setattr(cls, name, counted)


def report(started: float) -> None:
    path = os.environ.get("CALL_LOAD_BREAKDOWN")
    if not path:
        return
    lines = [f"process CPU {time.process_time() - started:.3f} s"]
    for _cls, _name, label in ENTRIES:
        n = calls[label]
        lines.append(f"{spent[label]:8.3f} s {n:8d} calls {1e6 * spent[label] / max(n, 1):8.1f} "
                     f"us each  {label}")  # fmt: skip
    Path(path).write_text("\n".join(lines) + "\n")


def main() -> int:
    for cls, name, label in ENTRIES:
        wrap(cls, name, label)
    atexit.register(report, time.process_time())
    profile_path = os.environ.get("CALL_LOAD_CPROFILE")
    if profile_path:
        # a deterministic profile of the reactor thread (call counts; its
        # own overhead makes the times larger than they are)
        import cProfile

        profiler = cProfile.Profile()
        atexit.register(lambda: (profiler.disable(), profiler.dump_stats(profile_path)))
        profiler.enable()
    from agi_app.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
