"""Give the C heap's free pages back to the system now and then.

A long-running agi_app allocates and frees a great many small objects per
call (AMI events, FastAGI sessions, HTTP requests).  glibc's allocator keeps
what is freed inside its arenas, and the main arena's free memory grows
with the holes left between blocks still in use: in a soak at 25 calls/s
the process's resident size kept rising by a few hundred KiB a minute while
the memory in use (Python's and SQLite's) stayed flat (docs/benchmarks.md,
"Soak").  ``malloc_trim(0)`` hands every whole free page back (glibc 2.8
and later release pages in the middle of an arena too), so the resident
size follows what is really used.

Elsewhere (another C library, no ``malloc_trim``) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from collections.abc import Callable

from twisted.internet import task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

__all__ = ["HeapTrimmer", "libc_malloc_trim"]

log = Logger()

#: seconds between trims: each costs about a millisecond on the reactor
DEFAULT_INTERVAL = 60.0


def libc_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class HeapTrimmer:
    """Calls ``trim(0)`` every ``interval`` seconds on ``clock``.

    :param clock: an ``IReactorTime``
    :param trim: the C library's ``malloc_trim`` (default: found with
        :func:`libc_malloc_trim`; None: the trimmer does nothing)
    """

    def __init__(
        self,
        clock: IReactorTime,
        *,
        interval: float = DEFAULT_INTERVAL,
        trim: Callable[[int], int] | None | bool = True,
    ):
        self.clock = clock
        self.interval = interval
        self._trim: Callable[[int], int] | None = (
            libc_malloc_trim() if trim is True else (trim or None)  # type: ignore[assignment]
        )
        self._loop: task.LoopingCall | None = None
        #: trims made, and the CPU seconds they took in all
        self.trims = 0
        self.seconds = 0.0

    @property
    def available(self) -> bool:
        """True where the C library can trim its heap."""
        return self._trim is not None

    def start(self) -> None:
        """Trim every ``interval`` seconds (the first after one interval)."""
        if self._trim is None or self._loop is not None:
            return
        self._loop = task.LoopingCall(self.trim)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False).addErrback(
            lambda f: log.failure("heap trimming stopped", f)
        )

    def stop(self) -> None:
        """Stop trimming."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def trim(self) -> None:
        """Hand the heap's free pages back now."""
        if self._trim is None:
            return
        started = time.thread_time()
        self._trim(0)
        self.seconds += time.thread_time() - started
        self.trims += 1
