"""Recordings of conversations: MixMonitor started from a FastAGI session,
stored once the other party answers, completed with size and duration when
the file is.

MixMonitor runs with ``b``: it writes only while the channel is bridged, so
a call nobody answered leaves a file with nothing but a WAV header.  Such a
call gets no recording in the store, and its empty file is removed once no
channel of the call is left.  The file name comes from the call
(``<order id or "call">_<call id>.wav``), so a restarted process finds it
again.

A call that call control transfers is recorded one file per leg of the
conversation: the first file stops when the party that handed the call over
leaves, and the dialplan records the next leg on the party it goes to into
``<order id or "call">_<call id>-2.wav`` (``-3``... for further transfers).
Each is stored as a further recording of the same call once its MixMonitor
started, and completed like the first.

A :class:`Recorder` keeps no state of its own: what it knows of a call's
recording lives on the object that follows the call (see
:class:`Recording`), and timers it starts are cancelled by :meth:`stop`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from agi_app.times import iso_time

__all__ = ["WAV_HEADER", "Recorder", "Recording", "recording_name"]

log = Logger(namespace="agi_app.calls")

#: bytes of the header of the WAV files MixMonitor writes
WAV_HEADER = 44
#: bytes of audio per second: 8 kHz, 16-bit, mono
WAV_BYTES_PER_SECOND = 16000


def recording_name(order_id: str | None, call_id: str, leg: int = 1) -> str:
    """The file name of a call's recording (of its ``leg``-th leg after
    transfers: ``-2``, ``-3``...).  Built only from checked ids
    (``[A-Za-z0-9_.:-]``); ``:`` is kept out of file names."""
    suffix = f"-{leg}" if leg > 1 else ""
    return f"{order_id or 'call'}_{call_id}{suffix}".replace(":", "-") + ".wav"


@dataclass
class Recording:
    """A call's recording, as far as this process knows it."""

    call_id: str
    #: the file, as this process sees it (``[dialing] recordings_dir``)
    path: str
    #: clock time MixMonitor started (the stored ``created_at``)
    started: float | None = None
    #: set once stored
    record_id: int | None = None
    #: the size watch (or the empty-file removal) has begun
    watched: bool = False
    #: which leg of the conversation it records (2, 3...: after transfers)
    leg: int = 1


class Recorder:
    """Starts, stores and completes recordings.

    :param store: the call log
    :param dialing: ``recordings_dir`` (where this process reads the files)
        and ``pbx_recordings`` (the same folder as Asterisk sees it)
    :param clock: time and timers
    :param live: whether any channel of a call (by id) is still on the PBX;
        None while that cannot be known (AMI link down)
    """

    def __init__(
        self,
        *,
        store: Any,
        dialing: Any,
        clock: Any,
        live: Callable[[str], bool | None],
        checks: int = 20,
        interval: float = 0.5,
    ):
        self.store = store
        self.dialing = dialing
        self.clock = clock
        self._live = live
        self._checks = checks
        self._interval = interval
        self._timers: set = set()
        self._stopped = False
        #: record_ids whose size is being watched now
        self._watching: set[int] = set()
        self._completed: list[Callable[[dict[str, Any]], object]] = []

    def on_complete(self, callback: Callable[[dict[str, Any]], object]) -> Callable[[], None]:
        """Call ``callback(recording)`` (the stored recording, with its size
        and duration) each time a recording is complete; returns the
        function that stops it.  A callback that fails is logged and the
        others still run."""
        self._completed.append(callback)

        def stop() -> None:
            if callback in self._completed:
                self._completed.remove(callback)

        return stop

    def _announce(self, recording: dict[str, Any] | None) -> None:
        if recording is None:
            return
        for callback in list(self._completed):
            try:
                callback(recording)
            except Exception:
                log.failure("recording completion callback failed")

    def stop(self) -> None:
        """Cancel the pending file checks (and start no more)."""
        self._stopped = True
        for call in list(self._timers):
            if call.active():
                call.cancel()
        self._timers.clear()

    def expected(
        self, call_id: str, order_id: str | None, started: float | None, leg: int = 1
    ) -> Recording:
        """The recording MixMonitor was (or is to be) started on for this
        call's ``leg``-th leg."""
        path = os.path.join(self.dialing.recordings_dir, recording_name(order_id, call_id, leg))
        return Recording(call_id, path, started, leg=leg)

    def pbx_path(self, order_id: str | None, call_id: str, leg: int = 1) -> str:
        """The recording file of a call (of its ``leg``-th leg) as Asterisk sees it."""
        name = recording_name(order_id, call_id, leg)
        return f"{self.dialing.pbx_recordings.rstrip('/')}/{name}"

    async def start(self, agi: Any, call_id: str, order_id: str | None) -> Recording | None:
        """MixMonitor on the session's channel; None if it could not start
        (a recording problem never stops the call)."""
        name = recording_name(order_id, call_id)
        pbx_path = self.pbx_path(order_id, call_id)
        try:
            await agi.exec_("MixMonitor", pbx_path, "b")
        except Exception as e:
            log.warn("MixMonitor for {call_id} failed: {e}", call_id=call_id, e=e)
            return None
        return Recording(
            call_id, os.path.join(self.dialing.recordings_dir, name), self.clock.seconds()
        )

    async def store_it(self, rec: Recording | None) -> None:
        """Put the recording in the store (the other party answered).  Never fails."""
        if rec is None or rec.record_id is not None:
            return
        started = rec.started if rec.started is not None else self.clock.seconds()
        try:
            stored = await self.store.add_recording(
                call_id=rec.call_id, path=rec.path, created_at=iso_time(started)
            )
        except Exception as e:
            log.warn("recording of {call_id} not stored: {e}", call_id=rec.call_id, e=e)
            return
        rec.record_id = stored["record_id"]

    def finish(self, rec: Recording | None) -> None:
        """The conversation is over: once the file stops growing, store its
        size and duration; a file of a recording that was never stored is
        removed if it holds no audio.  Once per recording."""
        if rec is None or rec.watched or self._stopped or rec.record_id in self._watching:
            return
        rec.watched = True
        if rec.record_id is None:
            self._drop_if_empty(rec)
        else:
            self._watching.add(rec.record_id)
            self._complete(rec)

    def watching(self, record_id: int) -> bool:
        """Whether this process is waiting for that recording's file to settle."""
        return record_id in self._watching

    def _later(self, fn: Callable[[], object]) -> None:
        def run() -> None:
            self._timers.discard(call)
            fn()

        call = self.clock.callLater(self._interval, run)
        self._timers.add(call)

    def _complete(self, rec: Recording) -> None:
        # MixMonitor closes the file only when the channel is gone: look at
        # its size until two looks agree.
        state = {"size": -1, "tries": self._checks}

        def check() -> None:
            try:
                size = os.path.getsize(rec.path)
            except OSError:
                size = -1
            if size > 0 and size == state["size"]:
                self._watching.discard(rec.record_id)
                duration = max(0.0, (size - WAV_HEADER) / WAV_BYTES_PER_SECOND)
                d = self.store.update_recording(rec.record_id, duration=duration, size=size)
                d.addCallback(self._announce)
                d.addErrback(lambda f: log.failure("recording update", f))
                return
            state["size"] = size
            state["tries"] -= 1
            if state["tries"] > 0:
                self._later(check)
            else:
                self._watching.discard(rec.record_id)

        self._later(check)

    def _drop_if_empty(self, rec: Recording) -> None:
        # Best effort: once no channel of the call is left (MixMonitor has
        # closed the file), remove it if it holds no audio.
        state = {"tries": self._checks}

        def check() -> None:
            state["tries"] -= 1
            if self._live(rec.call_id) is False and rec.record_id is None:
                try:
                    if os.path.getsize(rec.path) <= WAV_HEADER:
                        os.remove(rec.path)
                        return
                except OSError:
                    pass  # not written yet (or not visible from here): look again
                else:
                    return  # it has audio after all: keep it
            if state["tries"] > 0:
                self._later(check)

        self._later(check)
