"""Calling missed callers back (``[inbound] auto_callback = yes``).

:class:`AutoCallback` looks at the open missed calls (nobody got through to
the caller yet, :mod:`agi_app.calls.missed`) whenever something may have
changed -- a new missed call, an operator's device state, an AMI login, and
once a minute for the working hours -- and, within the working hours, rings
each caller back through the operator-first flow: a ``callback`` call of
:class:`~agi_app.calls.service.CallService` that rings one free member of
``[inbound] group`` (device state ``NOT_INUSE``) and, once that operator
answers, dials the caller.

- One callback per caller (number) at a time, for all of its open missed
  calls; at most ``callback_attempts`` per caller, ``callback_retry_delay``
  seconds apart; none for calls older than ``callback_max_age``.
- One callback per free operator: an operator rung for a callback is not
  offered another until it answered or the call ended.
- The caller answering (``CLIENT_PICKUP``) marks the caller's missed calls
  handled with the callback's call id (any other call that gets through to
  the number does the same, see :class:`~agi_app.calls.missed.MissedCalls`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger

from agi_app.calls import statuses as st
from agi_app.calls.missed import phone_variants
from agi_app.calls.service import CallRequest
from agi_app.errors import AppError
from agi_app.hours import WorkingHours
from agi_app.times import iso_time, parse_time

__all__ = ["FREE", "AutoCallback"]

log = Logger(namespace="agi_app.calls.callback")

#: the device state of an operator who may be rung
FREE = "NOT_INUSE"


class AutoCallback:
    """Rings missed callers back when an operator of the group is free.

    :param calls: the :class:`~agi_app.calls.service.CallService` (its
        lifecycle, store and AMI link are used)
    :param group: the extensions that call back (``[inbound] group``)
    :param hours: when callbacks may be placed
    :param trunk: the trunk callers are dialled through
    :param ring: seconds an operator's phone rings
    :param attempts: callbacks per caller at most
    :param retry_delay: seconds between two callbacks to one caller
    :param max_age: seconds after which a missed call is not called back
    :param device: the device of an operator (``[dialing] operator_channel``)
    :param check_every: seconds between two looks when nothing happens
    """

    def __init__(
        self,
        *,
        calls: Any,
        group: Iterable[str],
        hours: WorkingHours,
        trunk: str,
        ring: int,
        attempts: int = 3,
        retry_delay: float = 600.0,
        max_age: float = 259200.0,
        device: str = "PJSIP/{sip}",
        check_every: float = 60.0,
        pbx: str = "default",
    ):
        self.calls = calls
        self.lifecycle = calls.lifecycle
        self.store = calls.store
        self.ami = calls.ami
        self.clock = calls.clock
        self.group = tuple(group)
        self.hours = hours
        self.trunk = trunk
        self.ring = ring
        self.attempts = attempts
        self.retry_delay = retry_delay
        self.max_age = max_age
        self.device = device
        self.pbx = pbx
        #: bare number -> the call id of its callback going on
        self.in_flight: dict[str, str] = {}
        #: operators rung for a callback that did not answer yet
        self.ringing: set[str] = set()
        self._looking = False
        self._again = False
        self._unsubscribe: list[Callable[[], object]] = []
        self._loop = task.LoopingCall(self.poke)
        self._loop.clock = self.clock
        self._check_every = check_every
        #: the rounds started and not finished (tests wait on them)
        self.pending: set[defer.Deferred] = set()

    def start(self) -> None:
        """Look now, on every device state change and AMI login, and every
        ``check_every`` seconds."""
        self._unsubscribe.append(self.ami.subscribe(lambda _e: self.poke(), "DeviceStateChange"))
        off = self.ami.on_connect(lambda _ami: self.poke())
        if callable(off):
            self._unsubscribe.append(off)
        self._loop.start(self._check_every, now=True)
        log.info("calling missed callers back: {group} within {hours}",
                 group=", ".join(self.group), hours=self.hours.describe())  # fmt: skip

    def stop(self) -> None:
        """Stop looking (callbacks going on go on)."""
        while self._unsubscribe:
            self._unsubscribe.pop()()
        if self._loop.running:
            self._loop.stop()

    def poke(self, _row: object = None) -> None:
        """Something changed: look for callers to ring back (once at a time;
        a poke while looking makes the look run again)."""
        if self._looking:
            self._again = True
            return
        d = defer.ensureDeferred(self._look())
        self.pending.add(d)

        def done(result: object) -> object:
            self.pending.discard(d)
            return result

        d.addBoth(done)
        d.addErrback(lambda f: log.failure("callbacks: looking for callers failed", f))

    def free_operators(self) -> list[str]:
        """The members of the group whose phones are idle and not being rung
        for a callback, in the group's order."""
        states = self.ami.device_states
        return [
            m for m in self.group
            if states.get(self.device.format(sip=m)) == FREE and m not in self.ringing
        ]  # fmt: skip

    async def _look(self) -> None:
        self._looking = True
        try:
            while True:
                self._again = False
                await self._round()
                if not self._again:
                    return
        finally:
            self._looking = False

    async def _round(self) -> None:
        now = self.clock.seconds()
        if not self.ami.connected or not self.hours.contains(now):
            return
        free = self.free_operators()
        if not free:
            return
        rows = await self.store.open_missed_calls(since=iso_time(now - self.max_age), pbx=self.pbx)
        callers: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            callers.setdefault(phone_variants(row["phone"])[0], []).append(row)
        for number, missed in callers.items():
            if not free:
                return
            if number in self.in_flight or not self._due(missed, now):
                continue
            await self._call_back(number, missed, free.pop(0), now)

    def _due(self, missed: list[dict[str, Any]], now: float) -> bool:
        if max(r["callback_attempts"] for r in missed) >= self.attempts:
            return False
        times = [parse_time(r["last_callback_at"]) for r in missed if r["last_callback_at"]]
        last = max((t for t in times if t is not None), default=None)
        return last is None or now - last >= self.retry_delay

    async def _call_back(
        self, number: str, missed: list[dict[str, Any]], operator: str, now: float
    ) -> None:
        phone = missed[0]["phone"]
        request = CallRequest(
            kind=st.CALLBACK,
            first=operator,
            phone=phone,
            trunk=self.trunk,
            call_time_to_ext=self.ring,
            caller_id_for_employee=f"Callback {phone}",
        )
        try:
            call_id, _created = await self.calls.place(request)
        except AppError as e:
            log.warn("callback to {phone} not placed: {e}", phone=phone, e=e.message)
            return
        log.info("calling {phone} back ({n} missed) through {operator}: call {call_id}",
                 phone=phone, n=len(missed), operator=operator, call_id=call_id)  # fmt: skip
        self.in_flight[number] = call_id
        self.ringing.add(operator)
        await self.store.missed_callback_placed(phone_variants(phone), call_id, iso_time(now))
        call = self.lifecycle.get(call_id)
        if call is None:  # it ended at once (the operator went offline meanwhile)
            self._operator_done(operator)
            self._caller_done(number, call_id, None)
            return
        self.lifecycle.wait_for(call, {st.OPERATOR_PICKUP}).addBoth(
            lambda _r: self._operator_done(operator))
        self.lifecycle.wait_for(call, {st.CLIENT_PICKUP}).addCallback(
            lambda status: self._caller_done(number, call_id, status))  # fmt: skip

    def _operator_done(self, operator: str) -> None:
        self.ringing.discard(operator)
        self.poke()

    def _caller_done(self, number: str, call_id: str, status: str | None) -> None:
        if self.in_flight.get(number) == call_id:
            del self.in_flight[number]
        if status == st.CLIENT_PICKUP:
            d = self.store.missed_calls_handled(
                phone_variants(number), call_id, iso_time(self.clock.seconds()))
            d.addErrback(lambda f: log.failure("callbacks: marking {n} handled failed", f,
                                               n=number))  # fmt: skip
        self.poke()
