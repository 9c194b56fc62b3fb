"""agi_app.memory: the C heap's free pages handed back now and then."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from twisted.internet.task import Clock

from agi_app.memory import HeapTrimmer, libc_malloc_trim


def test_it_trims_every_interval_until_stopped():
    clock, calls = Clock(), []
    trimmer = HeapTrimmer(clock, interval=60, trim=lambda pad: calls.append(pad) or 1)
    trimmer.start()
    clock.advance(59)
    assert calls == []
    clock.advance(1)
    clock.advance(60)
    assert calls == [0, 0] and trimmer.trims == 2
    trimmer.stop()
    clock.advance(600)
    assert calls == [0, 0]


def test_without_malloc_trim_it_does_nothing():
    clock = Clock()
    trimmer = HeapTrimmer(clock, trim=None)
    assert not trimmer.available
    trimmer.start()
    clock.advance(3600)
    trimmer.trim()
    assert trimmer.trims == 0 and not clock.getDelayedCalls()


def test_this_systems_c_library_has_it():
    # the sandbox and the service run on glibc (Debian)
    assert libc_malloc_trim() is not None


_FRAGMENTED = textwrap.dedent(
    """
    import sys
    from twisted.internet.task import Clock
    from agi_app.memory import HeapTrimmer

    def rss_kib():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])

    # 100 MiB of 1 KiB blocks (malloc'd: larger than Python's small objects),
    # keeping one in 64: the rest is free memory between blocks in use,
    # which free() alone does not hand back
    blocks = [bytes(1024) for _ in range(100 * 1024)]
    kept = blocks[::64]
    del blocks
    before = rss_kib()
    HeapTrimmer(Clock()).trim()
    after = rss_kib()
    print(before, after, len(kept))
    """
)


def test_a_trim_hands_back_the_free_memory_between_blocks_in_use():
    run = subprocess.run([sys.executable, "-c", _FRAGMENTED], capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stderr
    before, after, _kept = map(int, run.stdout.split())
    # about 100 MiB resident before, most of it free; handed back after
    assert before > 80 * 1024, (before, after)
    assert after < before - 50 * 1024, (before, after)
