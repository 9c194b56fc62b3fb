"""The times of a call's statuses stay in order in the store, also for a
status logged late (dated back to when it happened): never before the
status it follows, to the store's millisecond."""

from __future__ import annotations

import pytest_twisted
from twisted.internet.task import Clock

from agi_app.calls import statuses as st
from agi_app.calls.lifecycle import PICKUP_UNSEEN, Lifecycle
from agi_app.config import DialingConfig
from agi_app.store.testing import MemoryStore

T0 = 1_796_624_012.8434


@pytest_twisted.ensureDeferred
async def test_a_status_dated_back_is_not_before_the_one_it_follows():
    # The store reads the clock a moment after the lifecycle did (the write
    # comes after the status's bookkeeping): here 0.7 ms later, across a
    # millisecond boundary.
    clock, store_clock = Clock(), Clock()
    clock.advance(T0)
    store_clock.advance(T0 + 0.0007)
    store = MemoryStore(store_clock)
    lifecycle = Lifecycle(store=store, ami=None, dialing=DialingConfig(), clock=clock)
    call, created = await lifecycle.create(st.MAKE_CALL, {}, sip="1000", phone="380639920001")
    assert created
    for status in (st.OPERATOR_CALLTO, st.OPERATOR_PICKUP, st.CLIENT_CALLTO):
        assert await lifecycle.log(call, status) is not None
    # the client's answer was not seen: dated as when the client was dialled
    await lifecycle.log(call, st.CLIENT_PICKUP, PICKUP_UNSEEN,
                        at=call.logged_at[st.CLIENT_CALLTO])  # fmt: skip
    entries = await store.statuses(call.call_id)
    assert [e["status"] for e in entries] == [
        st.CALL, st.OPERATOR_CALLTO, st.OPERATOR_PICKUP, st.CLIENT_CALLTO, st.CLIENT_PICKUP]
    times = [e["time"] for e in entries]
    assert times == sorted(times), times
    assert entries[-1]["time"] == entries[-2]["time"]
    store.close()
