"""The call statistics of the store (on both engines): the summary tables the triggers keep as
statuses are written agree with the same figures computed the plain way
from the history (here, in Python), with a rebuild from the history, and the
store's range queries agree with sums over the plain figures."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from twisted.internet.task import Clock

from agi_app.calls import statuses as st
from agi_app.store import Store, pg_schema
from agi_app.store.pg_testing import Handover
from agi_app.store.pg_testing import settled as fired
from agi_app.store.schema import rebuild_call_stats
from agi_app.store.stats_sqlite import hour_key
from agi_app.store.testing import MemoryStore
from agi_app.times import iso_time, parse_time

T0 = datetime(2026, 12, 5, 22, 0, tzinfo=UTC).timestamp()
SIPS = ("1000", "1001", "1002")

# One call: its kind, its operator, and the path it takes, each step after
# a pause (seconds).  Paths follow the lifecycle's order of statuses.
_OPERATOR_ENDS = [st.OPERATOR_BUSY, st.OPERATOR_NOANSWER, st.OPERATOR_OFFLINE, st.ERROR]
_CLIENT_ENDS = [st.CLIENT_BUSY, st.CLIENT_NOANSWER, st.CLIENT_CANCEL, st.ERROR]


@hs.composite
def calls(draw):
    kind = draw(hs.sampled_from(["makeCall", "extToPhone", "callback", "phoneToPhone",
                                 "incoming"]))  # fmt: skip
    sip = draw(hs.sampled_from(SIPS))
    pause = hs.floats(min_value=0, max_value=5400)
    steps: list[tuple[str, float, str | None, float | None]] = []
    if kind == "incoming":
        steps.append((st.CLIENT_PICKUP, draw(pause), "menu main", None))
        if draw(hs.booleans()):
            target = draw(hs.sampled_from([f"extension {sip}", "number 380631110000"]))
            steps.append((st.OPERATOR_CALLTO, draw(pause), target, None))
            if draw(hs.booleans()):
                steps.append((st.OPERATOR_PICKUP, draw(pause), None, None))
                steps.append((st.FINISH, draw(pause), "talk", None))
            else:
                steps.append((draw(hs.sampled_from(_OPERATOR_ENDS)), draw(pause), None, None))
        else:
            steps.append((st.FINISH, draw(pause), "the IVR ended the call", None))
        return kind, None, steps
    steps.append((st.OPERATOR_CALLTO, draw(pause), None, None))
    if draw(hs.integers(0, 3)) == 0:
        steps.append((draw(hs.sampled_from(_OPERATOR_ENDS)), draw(pause), None, None))
        return kind, sip, steps
    steps.append((st.OPERATOR_PICKUP, draw(pause), None, None))
    steps.append((st.CLIENT_CALLTO, draw(pause), None, None))
    if draw(hs.integers(0, 2)) == 0:
        steps.append((draw(hs.sampled_from(_CLIENT_ENDS)), draw(pause), None, None))
        return kind, sip, steps
    steps.append((st.CLIENT_PICKUP, draw(pause), None, None))
    talk = draw(hs.one_of(hs.none(), hs.floats(min_value=0, max_value=3600)))
    steps.append((st.FINISH, draw(pause), "talk", talk))
    return kind, sip, steps


def play(store: Store, clock: Clock, all_calls, starts=None) -> None:
    """Run the calls, each from its start (seconds after now; default one
    after the other), their steps interleaved in time order: a call's
    answer or end lands in an hour where later calls are counted already."""
    starts = starts or [7.0 * n for n in range(len(all_calls))]
    timeline = []
    for n, ((_kind, _sip, steps), start) in enumerate(zip(all_calls, starts, strict=False)):
        at = start
        timeline.append((at, n, -1, None))
        for i, (status, pause, detail, talk) in enumerate(steps):
            at += pause
            timeline.append((at, n, i, (status, detail, talk)))
    t0 = clock.seconds()
    for at, n, _, step in sorted(timeline, key=lambda e: e[:3]):
        clock.advance(max(0.0, t0 + at - clock.seconds()))
        kind, sip, _ = all_calls[n]
        if step is None:
            fired(store.create_call(call_id=f"c{n}", kind=kind, sip=sip, phone="380631110000",
                                    order_id=None, external_key=None, params={}))  # fmt: skip
        else:
            status, detail, talk = step
            fired(store.add_status(f"c{n}", status, detail, talk_seconds=talk))


def _rows(store: Store, sql: str) -> list[dict]:
    return fired(store._run(store._select, sql))


def reference(store: Store) -> tuple[dict, dict]:
    """The figures per (hour, sip) and the outcomes per (hour, status),
    computed from the history one call at a time."""
    operators: dict = defaultdict(lambda: dict.fromkeys(
        ("offered", "answered", "ring_ms", "talked", "talk_ms"), 0))  # fmt: skip
    outcomes: dict = defaultdict(int)
    history = defaultdict(list)
    for e in _rows(store, "SELECT * FROM call_status ORDER BY id"):
        history[e["call_id"]].append(e)
    for call in _rows(store, "SELECT * FROM calls"):
        entries = history[call["call_id"]]
        by_status = {e["status"]: e for e in entries}
        if call["final_status"]:
            outcomes[(call["created_at"][:13], call["final_status"])] += 1
        offer = by_status.get(st.OPERATOR_CALLTO)
        if offer is None or call["kind"] == "phoneToPhone":
            continue
        sip = call["sip"]
        if sip is None:
            detail = offer["detail"] or ""
            if not detail.startswith("extension "):
                continue
            sip = detail[len("extension "):]
        figures = operators[(offer["time"][:13], sip)]
        figures["offered"] += 1
        pickup = by_status.get(st.OPERATOR_PICKUP)
        if pickup is None:
            continue
        figures["answered"] += 1
        figures["ring_ms"] += ms_between(offer["time"], pickup["time"])
        if call["final_status"] != st.FINISH:
            continue
        if call["kind"] == "incoming":
            talk = ms_between(pickup["time"], call["finished_at"])
        elif call["talk_seconds"] is None:
            continue
        else:
            talk = round(call["talk_seconds"] * 1000)
        figures["talked"] += 1
        figures["talk_ms"] += talk
    return dict(operators), dict(outcomes)


def ms_between(a: str, b: str) -> int:
    return max(0, round((parse_time(b) - parse_time(a)) * 1000))


def tables(store: Store) -> tuple[dict, dict]:
    """The figures per (hour, sip) -- each hour's running totals minus the
    operator's previous ones -- and the outcomes per (hour, status)."""
    rows = _rows(store, "SELECT * FROM operator_totals ORDER BY sip, hour")
    operators, before = {}, {}
    for r in rows:
        hour, sip = r.pop("hour"), r.pop("sip")
        previous = before.get(sip, dict.fromkeys(r, 0))
        operators[(hour, sip)] = {k: v - previous[k] for k, v in r.items()}
        before[sip] = r
    if isinstance(store, MemoryStore):  # PostgreSQL's triggers call a function instead
        assert _rows(store, "SELECT * FROM operator_changes") == []
    rows = _rows(store, "SELECT * FROM outcome_hours")
    outcomes = {(r["period"], r["status"]): r["n"] for r in rows}
    return operators, outcomes


def rebuild(store: Store) -> None:
    if isinstance(store, MemoryStore):

        def run() -> None:
            with store._db.atomic():
                rebuild_call_stats(store._conn)

        fired(store._run(run))
        return

    def run_pg(conn) -> None:
        with conn.transaction():
            pg_schema.rebuild_call_stats(conn)

    fired(store._run(run_pg))


def _maker(cluster):
    """Makes a new, empty store (each call one: SQLite's MemoryStore, or
    with ``cluster`` a PostgresStore on a new schema of it) and its clock;
    its Deferreds can be waited for with :func:`fired` outside the reactor."""

    def make() -> tuple[Store, Clock]:
        clock = Clock()
        clock.advance(T0)
        if cluster is None:
            return MemoryStore(clock), clock
        from agi_app.store.postgres import PostgresStore

        store = PostgresStore(cluster.new_schema(), reactor=Handover(), clock=clock)
        store.open()
        return store, clock

    return make


@pytest.fixture
def fresh(store_engine: str, request: pytest.FixtureRequest):
    """:func:`_maker` of the engine under test."""
    return _maker(request.getfixturevalue("pg_cluster") if store_engine == "postgresql" else None)


# One test per engine, not a parametrized one: pytest-twisted wraps a
# hypothesis test's body in place, so its second parameter would run
# wrapped twice.
_EXAMPLES = settings(max_examples=60, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow,
                                            HealthCheck.function_scoped_fixture])  # fmt: skip


@_EXAMPLES
@given(hs.lists(calls(), max_size=25), hs.data())
def test_the_kept_figures_are_the_history_summed_up_on_sqlite(all_calls, data):
    kept_figures_are_the_history_summed_up(_maker(None), all_calls, data)


@_EXAMPLES
@given(hs.lists(calls(), max_size=25), hs.data())
def test_the_kept_figures_are_the_history_summed_up_on_postgresql(pg_cluster, all_calls, data):
    kept_figures_are_the_history_summed_up(_maker(pg_cluster), all_calls, data)


def kept_figures_are_the_history_summed_up(fresh, all_calls, data) -> None:
    store, clock = fresh()
    starts = data.draw(hs.lists(hs.floats(min_value=0, max_value=6 * 3600),
                                min_size=len(all_calls), max_size=len(all_calls)))  # fmt: skip
    try:
        play(store, clock, all_calls, starts)
        want_ops, want_outcomes = reference(store)
        got_ops, got_outcomes = tables(store)
        # ring times are whole milliseconds of julianday arithmetic: 1 ms apart at most
        assert got_ops.keys() == want_ops.keys()
        for key, want in want_ops.items():
            got = got_ops[key]
            for name in ("offered", "answered", "talked"):
                assert got[name] == want[name], (key, name)
            for name in ("ring_ms", "talk_ms"):
                assert abs(got[name] - want[name]) <= max(1, want["answered"]), (key, name)
        assert got_outcomes == want_outcomes
        # a rebuild from the history gives the same tables
        rebuild(store)
        assert tables(store) == (got_ops, got_outcomes)
        # any range of whole hours sums the hours inside it
        last = clock.seconds() + 3600
        a = data.draw(hs.floats(min_value=T0 - 86400, max_value=last))
        b = data.draw(hs.floats(min_value=a, max_value=last + 3 * 86400))
        start, end = whole_hour(a), whole_hour(b)
        sip = data.draw(hs.sampled_from([None, *SIPS]))
        expect = defaultdict(lambda: defaultdict(int))
        for (hour, who), figures in got_ops.items():
            if hour_key(start) <= hour < hour_key(end) and sip in (None, who):
                for name, value in figures.items():
                    expect[who][name] += value
        found = fired(store.operator_stats(start, end, sip))
        assert {r.pop("sip"): r for r in found} == {k: dict(v) for k, v in expect.items()}
        counts = defaultdict(dict)
        for (hour, status), n in got_outcomes.items():
            if hour_key(start) <= hour < hour_key(end):
                counts[hour][status] = n
        found = fired(store.call_outcomes(start, end))
        assert found == [{"period": h, "counts": counts[h]} for h in sorted(counts)]
    finally:
        fired(store.close())


def whole_hour(seconds: float) -> str:
    return iso_time(seconds - seconds % 3600)


def test_a_range_by_day_reads_whole_days(fresh):
    store, clock = fresh()
    try:
        play(store, clock, [("makeCall", "1000", [(st.OPERATOR_CALLTO, 0, None, None),
                                                  (st.OPERATOR_BUSY, 1, None, None)])] * 3)
        # 2026-12-05T22:00Z: the day of the calls
        [day] = fired(store.call_outcomes("2026-12-05T00:00:00.000Z", "2026-12-07T00:00:00.000Z",
                                          by="day"))  # fmt: skip
        assert day == {"period": "2026-12-05", "counts": {"OPERATOR_BUSY": 3}}
        with pytest.raises(ValueError):
            store.call_outcomes("2026-12-05T10:00:00.000Z", "2026-12-07T00:00:00.000Z", by="day")
        with pytest.raises(ValueError):
            store.operator_stats("2026-12-05T10:30:00.000Z", "2026-12-07T00:00:00.000Z")
        # an empty range
        assert fired(store.operator_stats("2026-12-05T10:00:00.000Z",
                                          "2026-12-05T10:00:00.000Z")) == []  # fmt: skip
    finally:
        fired(store.close())


def test_two_nodes_writing_at_once_keep_the_same_totals(pg_cluster):
    """Two PostgreSQL stores on one database (two nodes) write the steps of
    their calls at the same moments: the kept totals still sum up the
    history (the triggers of both run under the history's lock)."""
    from agi_app.store.postgres import PostgresStore

    url = pg_cluster.new_schema()
    clock = Clock()
    clock.advance(T0)
    nodes = [PostgresStore(url, reactor=Handover(), clock=clock) for _ in range(2)]
    for node in nodes:
        node.open()
    steps = [(st.OPERATOR_CALLTO, None, None), (st.OPERATOR_PICKUP, None, None),
             (st.CLIENT_CALLTO, None, None), (st.CLIENT_PICKUP, None, None),
             (st.FINISH, "talk", 30.25)]  # fmt: skip
    try:
        calls_ = range(40)
        for n in calls_:
            fired(nodes[n % 2].create_call(call_id=f"c{n}", kind="makeCall", sip=SIPS[n % 3],
                                           phone="380631110000", order_id=None,
                                           external_key=None, params={}))  # fmt: skip
        for status, detail, talk in steps:
            clock.advance(1234.5)  # the calls cross hours between steps
            pending = [nodes[n % 2].add_status(f"c{n}", status, detail, talk_seconds=talk)
                       for n in calls_]  # fmt: skip
            for d in pending:
                fired(d)
        want_ops, want_outcomes = reference(nodes[0])
        assert tables(nodes[1]) == (want_ops, want_outcomes)
        assert sum(f["talked"] for f in want_ops.values()) == len(calls_)
    finally:
        for node in nodes:
            fired(node.close())
