"""Shared test setup: Twisted's log goes to stderr (warnings and worse), so a
failing test shows what the service logged, e.g. the trace behind a 500."""

from __future__ import annotations

import sys

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
    textFileLogObserver,
)


class _Stderr:
    # pytest swaps sys.stderr per test; look it up at each write
    def write(self, text: str) -> None:
        sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


globalLogPublisher.addObserver(
    FilteringLogObserver(
        textFileLogObserver(_Stderr()),
        [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)],
    )
)
