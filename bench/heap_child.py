"""Run ``agi-app`` under tracemalloc, dumping its heap on SIGUSR2.

``bench/call_load.py --soak SECONDS --heap DIR`` starts agi_app through
this file instead of ``python -m agi_app``: it starts :mod:`tracemalloc`
(``CALL_LOAD_HEAP_FRAMES`` frames per allocation, 15 unless told; 0: no
tracemalloc, only the figures of the ``.json`` below, which cost the
process nothing between two dumps), installs a SIGUSR2 handler, and runs
``agi_app.cli.main`` unchanged.  On each SIGUSR2 it writes to the folder
named by ``CALL_LOAD_HEAP``:

* ``heap-<n>.pickle``: ``tracemalloc.take_snapshot()`` (load it with
  ``tracemalloc.Snapshot.load``);
* ``heap-<n>.json``: the traced size and its peak, the size of
  tracemalloc's own tables, the process's resident memory, glibc's
  ``mallinfo2()`` (all arenas: bytes in use, bytes free inside them, bytes
  in mmap'd blocks), SQLite's own ``sqlite3_memory_used()`` (its page
  caches, statements and schema), CPython's small-object allocator (the
  size of its arenas and of the blocks in use in them, from
  ``sys._debugmallocstats``), glibc's arenas one by one (size and free
  bytes; the whole ``malloc_info()`` is in ``heap-<n>-malloc.xml``), the garbage
  collector's counts of live objects by type, then (after the snapshot) a
  full collection: how many unreachable objects it found and the traced
  size after it, and the seconds the dump took (the reactor is blocked
  meanwhile).  When the file ``trim`` exists in the folder (the bench
  creates it before its last dump), the dump ends with ``malloc_trim(0)``
  and the resident memory after it.

Nothing of this is in agi_app itself: the product code has no debugging
hook.  The handler runs on the main (reactor) thread between two bytecodes,
as Python runs every signal handler.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import signal
import sys
import time
import tracemalloc
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]  # fmt: skip


def malloc_info() -> dict[str, int]:
    """glibc's counters summed over every arena (bytes), or {} elsewhere."""
    try:
        libc = ctypes.CDLL(None)
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError):
        return {}
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return {
        # sbrk'd and per-thread heaps, what of them is handed out and free
        "malloc_arenas": info.arena,
        "malloc_in_use": info.uordblks,
        "malloc_free": info.fordblks,
        # blocks of their own mapping (large ones; pymalloc's arenas are not
        # malloc's, see pymalloc below)
        "malloc_mmapped": info.hblkhd,
    }


def malloc_arenas(path: Path) -> list[dict[str, int]]:
    """glibc's ``malloc_info()`` written to ``path`` (XML), and per arena
    (the main one first, then one per thread that allocated): its size, and
    the bytes free in it (fast and ordinary bins)."""
    try:
        libc = ctypes.CDLL(None)
        libc.fopen.restype = ctypes.c_void_p
        libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
        libc.fclose.argtypes = [ctypes.c_void_p]
    except (OSError, AttributeError):
        return []
    fp = libc.fopen(str(path).encode(), b"w")
    if not fp:
        return []
    libc.malloc_info(0, fp)
    libc.fclose(fp)
    import xml.etree.ElementTree as ET

    arenas = []
    for heap in ET.parse(path).getroot().findall("heap"):
        free = sum(int(t.get("size", 0)) for t in heap.findall("total")
                   if t.get("type") in ("fast", "rest"))  # fmt: skip
        system = next((int(s.get("size", 0)) for s in heap.findall("system")
                       if s.get("type") == "current"), 0)  # fmt: skip
        arenas.append({"size": system, "free": free})
    return arenas


def sqlite_memory() -> dict[str, int]:
    """SQLite's own allocations (the library _sqlite3 is linked with)."""
    import _sqlite3

    for name in ("libsqlite3.so.0", _sqlite3.__file__):
        try:
            lib = ctypes.CDLL(name)
            used, high = lib.sqlite3_memory_used, lib.sqlite3_memory_highwater
        except (OSError, AttributeError):
            continue
        used.restype = high.restype = ctypes.c_int64
        high.argtypes = [ctypes.c_int]
        return {"sqlite_used": used(), "sqlite_highwater": high(0)}
    return {}


def pymalloc() -> dict[str, int]:
    """CPython's small-object allocator: the size of its arenas (mmap'd, not
    malloc's), and the bytes of the blocks in use in them."""
    read, write = os.pipe()
    saved = os.dup(2)
    try:
        os.dup2(write, 2)
        os.close(write)
        sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    with os.fdopen(read) as fh:
        text = fh.read()
    found = {"pymalloc_arenas": 0, "pymalloc_in_use": 0}
    for line in text.splitlines():
        key, _, value = line.rpartition("=")
        value = value.strip().replace(",", "")
        if "bytes/arena" in key:  # "N arenas * 1048576 bytes/arena = total"
            found["pymalloc_arenas"] = int(value)
        elif key.strip() == "# bytes in allocated blocks":
            found["pymalloc_in_use"] = int(value)
    return found


def dump(folder: Path, n: int) -> None:
    """Write snapshot ``n`` (with tracemalloc) and its summary to ``folder``."""
    started = time.monotonic()
    rss = rss_kib()
    figures = {**malloc_info(), **sqlite_memory(), **pymalloc(),
               "arenas": malloc_arenas(folder / f"heap-{n}-malloc.xml")}  # fmt: skip
    traced = peak = overhead = 0
    if tracemalloc.is_tracing():
        traced, peak = tracemalloc.get_traced_memory()
        overhead = tracemalloc.get_tracemalloc_memory()
        snapshot = tracemalloc.take_snapshot()
        snapshot.dump(str(folder / f"heap-{n}.pickle"))
        del snapshot
    counts = Counter(type(o).__name__ for o in gc.get_objects())
    # what of the traced size was garbage in reference cycles waiting for
    # the collector (it would have run anyway, later)
    unreachable = gc.collect()
    summary = {
        "n": n,
        "time": time.time(),
        "rss_kib": rss,
        "traced": traced,
        "traced_peak": peak,
        "tracemalloc_overhead": overhead,
        "gc_objects": sum(counts.values()),
        "gc_unreachable": unreachable,
        "traced_after_gc": tracemalloc.get_traced_memory()[0],
        **figures,
        "types": dict(counts.most_common(200)),
        "dump_seconds": round(time.monotonic() - started, 3),
    }
    if (folder / "trim").exists():
        # asked for by the last dump: how much of the resident memory is
        # free memory glibc keeps in its arenas (malloc_trim hands the free
        # pages of every arena back)
        libc = ctypes.CDLL(None)
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim(0)
        summary["rss_kib_after_trim"] = rss_kib()
    (folder / f"heap-{n}.json").write_text(json.dumps(summary))


def main() -> int:
    folder = Path(os.environ["CALL_LOAD_HEAP"])
    folder.mkdir(parents=True, exist_ok=True)
    frames = int(os.environ.get("CALL_LOAD_HEAP_FRAMES", "15"))
    if frames > 0:
        tracemalloc.start(frames)
    count = [0]

    def on_signal(signum: int, frame: object) -> None:
        count[0] += 1
        dump(folder, count[0])

    signal.signal(signal.SIGUSR2, on_signal)
    from agi_app.cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
