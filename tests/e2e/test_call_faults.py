"""Faults during operator-first calls, end to end: the AMI link cut, Asterisk
restarted, agi_app itself killed with SIGKILL and started again.

Whatever fails, every call still ends in exactly one final status, its
statuses stay in order, and nothing logged before the fault is lost
(CONTRACT section 2).  The AMI link runs through a TCP proxy that the test
cuts; the SIGKILL tests run agi_app as a real process (``agi-app serve``)
and read everything through its HTTP API."""

from __future__ import annotations

import configparser
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import pytest_twisted
from callflow import (
    HTTP_PORT,
    Api,
    app_config,
    make_call,
    reactor,
    start_app,
    wait_final,
    wait_status,
    words,
)
from twisted.internet import defer, task, threads
from twisted.protocols import portforward

from agi_app.calls import statuses as st
from agi_app.calls.lifecycle import REQUIRES
from agi_app.sandbox.phones import answer, no_answer

HAPPY = ["CALL", "OPERATOR_CALLTO", "OPERATOR_PICKUP", "CLIENT_CALLTO", "CLIENT_PICKUP", "FINISH"]
RANG_OUT = ["CALL", "OPERATOR_CALLTO"]
#: where each non-final status stands in a call's life
STEP = {s: i for i, s in enumerate(HAPPY[:-1])}
#: the agi_app processes of the SIGKILL tests listen beside the in-process one
PROCESS_HTTP_PORT = HTTP_PORT + 1
AGI_APP = str(Path(sys.executable).with_name("agi-app"))


# -- checks -----------------------------------------------------------------


def assert_one_final(entries: list[dict]) -> None:
    """The CONTRACT section 2 rules for one call's history."""
    statuses = words(entries)
    finals = [s for s in statuses if s in st.FINAL]
    assert len(finals) == 1, f"not exactly one final status: {statuses}"
    assert statuses[-1] in st.FINAL, f"something after the final status: {statuses}"
    assert len(set(statuses)) == len(statuses), f"a status twice: {statuses}"
    steps = [STEP[s] for s in statuses[:-1]]
    assert steps == list(range(len(steps))), f"statuses out of order: {statuses}"
    need = REQUIRES[st.MAKE_CALL].get(statuses[-1])
    assert need is None or need in statuses, f"{statuses[-1]} without {need}: {statuses}"
    ids = [e["id"] for e in entries]
    assert ids == sorted(set(ids)), f"ids not ascending: {ids}"
    times = [e["time"] for e in entries]
    assert times == sorted(times), f"times not in order: {entries}"


def assert_kept(before: list[dict], after: list[dict]) -> None:
    """Everything logged before the fault is still there, unchanged, first."""
    assert after[: len(before)] == before, f"history changed:\n{before}\n{after}"


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def talk_seconds(entry: dict) -> float | None:
    m = re.fullmatch(r"talk (\d+) s", entry.get("detail") or "")
    return float(m.group(1)) if m else None


# -- the AMI link through a proxy the test can cut --------------------------


class _ProxyServer(portforward.ProxyServer):
    def connectionMade(self) -> None:
        proxy = self.factory.proxy
        if not proxy.accepting:
            # the link is down: the TCP connect works, the session dies at once
            self.transport.abortConnection()
            return
        proxy.links.append(self)
        proxy.connections += 1
        super().connectionMade()

    def connectionLost(self, reason) -> None:
        links = self.factory.proxy.links
        if self in links:
            links.remove(self)
        super().connectionLost(reason)


class AMIProxy:
    """A TCP proxy between agi_app and the PBX's AMI port.

    :meth:`cut` aborts the connections through it (agi_app reconnects at
    once); :meth:`down` also kills every new one until :meth:`up`."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.links: list[_ProxyServer] = []
        self.connections = 0
        self.accepting = True
        self._port = None

    def start(self) -> int:
        factory = portforward.ProxyFactory("127.0.0.1", self.target_port)
        factory.protocol = _ProxyServer
        factory.noisy = False
        factory.proxy = self
        self._port = reactor().listenTCP(0, factory, interface="127.0.0.1")
        return self._port.getHost().port

    def cut(self) -> None:
        for link in list(self.links):
            link.transport.abortConnection()
            if link.peer is not None:
                link.peer.transport.abortConnection()

    def down(self) -> None:
        self.accepting = False
        self.cut()

    def up(self) -> None:
        self.accepting = True

    def stop(self):
        self.down()
        return self._port.stopListening()


def next_disconnect(ami) -> defer.Deferred:
    """Fires when the AMI session that is up now is lost."""
    d: defer.Deferred = defer.Deferred()

    def lost(_ami) -> None:
        remove()
        if not d.called:
            d.callback(None)

    remove = ami.on_disconnect(lost)
    return d.addTimeout(5, reactor())


async def reconnected(app, connections_before: int, proxy: AMIProxy | None = None) -> None:
    """Wait until the AMI session is logged in again (through a new proxy link)."""
    await app.ami.when_connected().addTimeout(15, reactor())
    if proxy is not None:
        assert proxy.connections > connections_before


# -- fixtures ---------------------------------------------------------------


@pytest.fixture
def proxy(sandbox):
    p = AMIProxy(sandbox.ami_port)
    p.start()
    yield p
    pytest_twisted.blockon(defer.maybeDeferred(p.stop))


@pytest_twisted.async_yield_fixture
async def app(sandbox, tmp_path, proxy):
    config = app_config(sandbox, tmp_path, AGI_APP_AMI_PORT=str(proxy._port.getHost().port))
    application = await start_app(config)
    yield application
    await application.stop()


async def ringing(app, phone, call_id: str) -> None:
    """The operator's phone rings (the Originate is in flight)."""
    await phone.wait_for_call(timeout=5, reactor=reactor())
    await wait_status(app, call_id, "OPERATOR_CALLTO")


# -- the AMI link -----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_ami_link_cut_while_connected(sandbox, app, api, proxy):
    """The conversation does not depend on AMI: cut once (the service logs in
    again and reconciles while the call is live), then cut and keep it down
    until the call has ended: FINISH comes from the FastAGI session."""
    sandbox.phones.start("1000", answer(after=0.2))
    sandbox.pstn.set("380639930001", answer_after=0.2, hangup_after=4)
    call_id = await make_call(
        api, sip="1000", phone="380639930001", order_id="f-ami1", external_key="k-f-ami1",
        playback_waiting="0",
    )  # fmt: skip
    await wait_status(app, call_id, "CLIENT_PICKUP")
    before = await app.store.statuses(call_id)
    links = proxy.connections
    lost = next_disconnect(app.ami)
    proxy.cut()
    await lost
    await reconnected(app, links, proxy)
    # reconcile() ran after that login with the call's channels live: it must
    # have kept the call open
    assert (await app.store.get_call(call_id))["final_status"] is None
    assert any(c.variables.get("AGI_APP_CALL_ID") == call_id for c in app.ami.channels.values()), (
        "CoreShowChannel events carry no AGI_APP_CALL_ID (manager.conf channelvars)"
    )
    links = proxy.connections
    lost = next_disconnect(app.ami)
    proxy.down()
    await lost
    entries = await wait_final(app, call_id, timeout=15)
    assert not app.ami.connected, "the call was meant to end while AMI was down"
    proxy.up()
    await reconnected(app, links, proxy)
    assert words(entries) == HAPPY
    assert_one_final(entries)
    assert_kept(before, entries)
    talk = talk_seconds(entries[-1])
    assert talk is not None and 3 <= talk <= 5, entries[-1]
    client = await sandbox.pstn.wait_for_hangup(number="380639930001", reactor=reactor())
    assert client["hung_up_by"] == "phone", "the client's call was cut short"
    # nothing changed once AMI was back
    assert await app.store.statuses(call_id) == entries


@pytest_twisted.ensureDeferred
async def test_ami_link_down_while_operators_ring(sandbox, app, api, proxy):
    """The link drops with two Originates in flight and stays down: the
    operator who answers is connected and the call finishes through FastAGI
    (the DialEnd event of the client's answer was lost: CLIENT_PICKUP is
    logged without a made-up moment, and FINISH says the talk time is
    unknown -- Dial's ANSWEREDTIME is the operator leg's time up); the one
    who never answers is closed by reconcile() once the link is back, since
    no channel of that call is left."""
    answers = sandbox.phones.start("1001", answer(after=2.0))
    rings = sandbox.phones.start("1002", no_answer())
    sandbox.pstn.set("380639930002", answer_after=0.2, hangup_after=2)
    answered = await make_call(
        api, sip="1001", phone="380639930002", order_id="f-ami2", external_key="k-f-ami2a",
        playback_waiting="0",
    )  # fmt: skip
    unanswered = await make_call(
        api, sip="1002", phone="380639930003", order_id="f-ami2", external_key="k-f-ami2b",
        call_time_to_ext="2",
    )  # fmt: skip
    await ringing(app, answers, answered)
    await ringing(app, rings, unanswered)
    before = {c: await app.store.statuses(c) for c in (answered, unanswered)}
    links = proxy.connections
    lost = next_disconnect(app.ami)
    proxy.down()
    await lost
    done = await wait_final(app, answered, timeout=15)
    await rings.wait_for_hangup(timeout=10, reactor=reactor())
    await sandbox.wait_for_channels(0, timeout=5, reactor=reactor())
    # Nobody can tell yet how the unanswered call ended.
    assert (await app.store.get_call(unanswered))["final_status"] is None
    proxy.up()
    await reconnected(app, links, proxy)
    closed = await wait_final(app, unanswered, timeout=5)
    assert words(done) == HAPPY
    assert words(closed) == [*RANG_OUT, "ERROR"]
    for call_id, entries in ((answered, done), (unanswered, closed)):
        assert_one_final(entries)
        assert_kept(before[call_id], entries)
    pickup, finish = done[4], done[5]
    assert pickup["detail"] == "answer time not seen", done
    assert pickup["time"] == done[3]["time"], done  # never before CLIENT_CALLTO
    assert finish["detail"] == "talk time unknown", finish
    assert (await app.store.get_call(answered))["talk_seconds"] is None


@pytest_twisted.ensureDeferred
async def test_ami_link_cut_briefly_while_operators_ring(sandbox, app, api, proxy):
    """The link drops with two Originates in flight and comes straight back:
    reconcile() finds both first legs ringing and keeps them; the answered
    one ends in FINISH, the other in OPERATOR_NOANSWER from its Hangup cause."""
    answers = sandbox.phones.start("1003", answer(after=2.5))
    rings = sandbox.phones.start("1004", no_answer())
    sandbox.pstn.set("380639930004", answer_after=0.2, hangup_after=1)
    answered = await make_call(
        api, sip="1003", phone="380639930004", order_id="f-ami3", external_key="k-f-ami3a",
        playback_waiting="0",
    )  # fmt: skip
    unanswered = await make_call(
        api, sip="1004", phone="380639930005", order_id="f-ami3", external_key="k-f-ami3b",
        call_time_to_ext="4",
    )  # fmt: skip
    await ringing(app, answers, answered)
    await ringing(app, rings, unanswered)
    before = {c: await app.store.statuses(c) for c in (answered, unanswered)}
    links = proxy.connections
    lost = next_disconnect(app.ami)
    proxy.cut()
    await lost
    await reconnected(app, links, proxy)
    live = {c.variables.get("AGI_APP_CALL_ID") for c in app.ami.channels.values()}
    assert unanswered in live, "the ringing first leg was not listed with its call id"
    results = await defer.gatherResults(
        [defer.ensureDeferred(wait_final(app, c, timeout=20)) for c in (answered, unanswered)]
    )
    done, rang = results
    assert words(done) == HAPPY
    assert words(rang) == [*RANG_OUT, "OPERATOR_NOANSWER"]
    for call_id, entries in zip((answered, unanswered), results, strict=True):
        assert_one_final(entries)
        assert_kept(before[call_id], entries)


# -- Asterisk restarted -------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_asterisk_restarted_mid_call(sandbox, tmp_path, api):
    """Asterisk stops under a connected call and a ringing one: the
    connected call ends in FINISH (its FastAGI connection dropped), the
    ringing one in ERROR once AMI is back on the new Asterisk."""
    application = await start_app(app_config(sandbox, tmp_path))
    try:
        sandbox.phones.start("1005", answer(after=0.2))
        rings = sandbox.phones.start("1006", no_answer())
        sandbox.pstn.set("380639930006", answer_after=0.2)  # talks until hung up
        connected = await make_call(
            api, sip="1005", phone="380639930006", order_id="f-ast", external_key="k-f-ast1",
            playback_waiting="0",
        )  # fmt: skip
        ringing_id = await make_call(
            api, sip="1006", phone="380639930007", order_id="f-ast", external_key="k-f-ast2"
        )
        pickup = await wait_status(application, connected, "CLIENT_PICKUP")
        await ringing(application, rings, ringing_id)
        before = {c: await application.store.statuses(c) for c in (connected, ringing_id)}
        lost = next_disconnect(application.ami)
        restarted_at = time.time()
        await threads.deferToThread(sandbox.restart)
        await lost
        done = await wait_final(application, connected, timeout=10)
        await application.ami.when_connected().addTimeout(15, reactor())
        closed = await wait_final(application, ringing_id, timeout=10)
        assert words(done) == HAPPY
        assert words(closed) == [*RANG_OUT, "ERROR"]
        for call_id, entries in ((connected, done), (ringing_id, closed)):
            assert_one_final(entries)
            assert_kept(before[call_id], entries)
        # The conversation ended when Asterisk stopped.
        talked = restarted_at - parse_time(pickup["time"])
        talk = talk_seconds(done[-1])
        assert talk is not None and abs(talk - talked) <= 1.5, (talked, done[-1])
        # The new Asterisk takes calls again.
        sandbox.phones.start("1007", answer(after=0.2))
        sandbox.pstn.set("380639930008", answer_after=0.2, hangup_after=0.5)
        again = await make_call(
            api, sip="1007", phone="380639930008", order_id="f-ast", external_key="k-f-ast3",
            playback_waiting="0",
        )  # fmt: skip
        assert words(await wait_final(application, again)) == HAPPY
    finally:
        await application.stop()


# -- agi_app killed with SIGKILL ----------------------------------------------


class AgiAppProcess:
    """``agi-app serve --config FILE`` as a child process, started again on
    the same store after each :meth:`kill`."""

    def __init__(self, sandbox, folder: Path):
        self.folder = folder
        self.http = f"http://127.0.0.1:{PROCESS_HTTP_PORT}"
        self.api = Api(self.http)
        config = configparser.ConfigParser(interpolation=None)
        config.read_string(sandbox.pbx.agi_app_ini())
        config["ami"].update(ping_interval="2", action_timeout="3", max_backoff="1")
        config["http"] = {
            "listen": f"tcp:{PROCESS_HTTP_PORT}:interface=127.0.0.1",
            "public_url": self.http,
        }
        config["websocket"] = {"listen": f"tcp:{PROCESS_HTTP_PORT + 1}:interface=127.0.0.1"}
        config["store"] = {"path": str(folder / "agi_app.sqlite3")}
        self.config_path = folder / "agi_app.ini"
        with open(self.config_path, "w") as fh:
            config.write(fh)
        self.proc: subprocess.Popen | None = None
        self.runs = 0

    def start(self) -> None:
        self.runs += 1
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGI_APP_")}
        with open(self.folder / f"agi_app-{self.runs}.log", "wb") as out:
            self.proc = subprocess.Popen(
                [AGI_APP, "serve", "--config", str(self.config_path)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.folder, env=env, start_new_session=True,
            )  # fmt: skip

    async def ready(self, timeout: float = 15.0) -> float:
        """Wait until /health says the AMI session is up; returns the seconds taken."""
        started = time.monotonic()
        while True:
            assert self.proc is not None and self.proc.poll() is None, self.logs()
            try:
                code, _ = await self.api.get("/health")
            except Exception:  # noqa: BLE001 - not listening yet
                code = None
            if code == 200:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"agi_app not ready in {timeout} s:\n{self.logs()}")
            await task.deferLater(reactor(), 0.1, lambda: None)

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def logs(self) -> str:
        """What each run logged, without the HTTP access lines of the polling."""
        out = []
        for n in range(1, self.runs + 1):
            text = (self.folder / f"agi_app-{n}.log").read_text(errors="replace")
            lines = [line for line in text.splitlines() if '"GET /api/' not in line]
            out.append(f"--- run {n}:\n" + "\n".join(lines[-40:]))
        return "\n".join(out)

    async def history(self, call_id: str) -> list[dict]:
        code, body = await self.api.get("/api/callHistory.json", call_id=call_id)
        assert code == 200, body
        return body["history"]

    async def place(self, **params) -> str:
        code, body = await self.api.get("/api/makeCall.json", **params)
        assert code == 200, body
        return body["call_id"]

    async def wait(self, call_id: str, status: str | None, timeout: float = 15.0) -> list[dict]:
        """The call's history once it has ``status`` (None: its final status)."""
        deadline = time.monotonic() + timeout
        while True:
            entries = await self.history(call_id)
            have = words(entries)
            if (status in have) if status else any(s in st.FINAL for s in have):
                return entries
            if time.monotonic() > deadline:
                raise TimeoutError(f"{call_id}: no {status or 'final status'}: {have}")
            await task.deferLater(reactor(), 0.1, lambda: None)


@pytest.fixture
def process(sandbox, tmp_path):
    p = AgiAppProcess(sandbox, tmp_path)
    yield p
    p.stop()


@pytest_twisted.ensureDeferred
async def test_agi_app_killed_while_connected(sandbox, process):
    """SIGKILL with two calls connected; one of them ends while no agi_app
    runs.  The new process closes that one at once and follows the other
    until its channels hang up: both FINISH, nothing logged before is lost."""
    process.start()
    await process.ready()
    sandbox.phones.start("1007", answer(after=0.2))
    sandbox.phones.start("1008", answer(after=0.2))
    sandbox.pstn.set("380639930010", answer_after=0.2, hangup_after=7)
    sandbox.pstn.set("380639930011", answer_after=0.2, hangup_after=1)
    common = {"order_id": "f-kill", "playback_waiting": "0"}
    follows = await process.place(sip="1007", phone="380639930010", external_key="k-kill1",
                                  **common)  # fmt: skip
    ends = await process.place(sip="1008", phone="380639930011", external_key="k-kill2",
                               **common)  # fmt: skip
    before = {c: await process.wait(c, "CLIENT_PICKUP") for c in (follows, ends)}
    process.kill()
    # The short call ends while no agi_app runs (its operator then hears the
    # error prompt: the FastAGI session was gone); only the long one is left.
    await sandbox.wait_for_channels(2, timeout=10, reactor=reactor())
    process.start()
    await process.ready()
    closed = await process.wait(ends, None, timeout=3)
    assert not any(s in st.FINAL for s in words(await process.history(follows))), (
        "the live call was closed although its channels were up"
    )
    followed = await process.wait(follows, None, timeout=15)
    assert words(followed) == HAPPY, process.logs()
    assert words(closed) == HAPPY, process.logs()
    for call_id, entries in ((follows, followed), (ends, closed)):
        assert_one_final(entries)
        assert_kept(before[call_id], entries)
    # The followed call's talk time runs to the client's hangup (7 s),
    # not to when the new process noticed it.
    talk = talk_seconds(followed[-1])
    assert talk is not None and 6 <= talk <= 8, followed[-1]
    assert closed[-1]["detail"] == "talk time unknown"
    # Both recordings are listed with their size and duration, though one
    # call ended while no agi_app ran and the other after the restart.
    deadline = time.monotonic() + 10
    while True:
        code, body = await process.api.get("/api/orderRecords.json", order_id="f-kill")
        assert code == 200, body
        records = {c["call_id"]: c["records"] for c in body["calls"]}
        if all(r and r[0]["size"] for r in records.values()):
            break
        assert time.monotonic() < deadline, records
        await task.deferLater(reactor(), 0.2, lambda: None)
    assert 5.5 <= records[follows][0]["duration"] <= 8, records[follows]
    assert 0.3 <= records[ends][0]["duration"] <= 2.5, records[ends]


@pytest_twisted.ensureDeferred
async def test_agi_app_killed_while_operators_ring(sandbox, process):
    """SIGKILL while two operators' phones ring, then a new process at once:
    the operator who answers later is served by the new process's FastAGI
    (FINISH); the one who never answers ends in OPERATOR_NOANSWER."""
    process.start()
    await process.ready()
    answers = sandbox.phones.start("1009", answer(after=5))
    rings = sandbox.phones.start("1000", no_answer())
    sandbox.pstn.set("380639930012", answer_after=0.2, hangup_after=1)
    answered = await process.place(sip="1009", phone="380639930012", order_id="f-kill-r",
                                   external_key="k-kill3", playback_waiting="0")  # fmt: skip
    unanswered = await process.place(sip="1000", phone="380639930013", order_id="f-kill-r",
                                     external_key="k-kill4", call_time_to_ext="7")  # fmt: skip
    await answers.wait_for_call(timeout=5, reactor=reactor())
    await rings.wait_for_call(timeout=5, reactor=reactor())
    before = {c: await process.wait(c, "OPERATOR_CALLTO") for c in (answered, unanswered)}
    process.kill()
    process.start()
    took = await process.ready()
    assert took < 4, f"the new process needed {took:.1f} s; the operator answers at 5 s"
    results = [await process.wait(c, None, timeout=20) for c in (answered, unanswered)]
    done, rang = results
    assert words(done) == HAPPY, process.logs()
    assert words(rang) == [*RANG_OUT, "OPERATOR_NOANSWER"], process.logs()
    for call_id, entries in zip((answered, unanswered), results, strict=True):
        assert_one_final(entries)
        assert_kept(before[call_id], entries)


@pytest_twisted.ensureDeferred
async def test_agi_app_killed_with_every_kind_of_call_in_progress(sandbox, process):
    """SIGKILL while an announcement call, an IVR call, a click-to-call and a
    callback to a group are each connected; every one of them ends on the
    PBX while no agi_app runs (the dialplan plays the message or the error
    prompt on, the clients hang up).  The new process gives each the final
    status its own kind's rules give -- FINISH, since each client was
    connected -- and none is closed as "not resumable"."""
    # the process reads ivr.conf from its working folder (the default path)
    (process.folder / "ivr.conf").write_text("[menu]\nprompt = ivr-main\ntimeout = 6\n1 = hangup\n")
    process.start()
    await process.ready()
    sandbox.phones.start("1001", answer(after=0.2))
    sandbox.phones.start("1002", answer(after=0.3))
    sandbox.phones.start("1003", no_answer())
    for number in ("380639930020", "380639930021"):  # they listen until hung up
        sandbox.pstn.set(number, answer_after=0.2)
    for number in ("380639930022", "380639930023"):
        sandbox.pstn.set(number, answer_after=0.2, hangup_after=3)
    api = process.api
    code, body = await api.post("/api/calls/callWithAnnouncement", {
        "phone_number": "380639930020", "voiceFileID": "announcement", "order_id": "f-kinds"})
    assert code == 200, body
    announcement = body["generalCallID"]
    code, body = await api.post("/api/calls/callWithInteractiveVoiceResponse", {
        "phone_number": "380639930021", "ivrName": "menu", "order_id": "f-kinds"})
    assert code == 200, body
    ivr = body["generalCallID"]
    click = await process.place(sip="1001", phone="380639930022", order_id="f-kinds",
                                external_key="k-kinds", playback_waiting="0")  # fmt: skip
    code, body = await api.post("/extension/1002/callback/",
                                {"dst_num": "380639930023", "src_num": ["1002", "1003"]})
    assert code == 201, body
    group = body["call_id"]
    calls = {"announcement": announcement, "ivr": ivr, "click-to-call": click, "group": group}
    before = {c: await process.wait(c, "CLIENT_PICKUP") for c in calls.values()}
    await process.wait(ivr, "CLIENT_PICKUP")
    process.kill()
    # Every call ends on the PBX while no agi_app runs.
    await sandbox.wait_for_channels(0, timeout=25, reactor=reactor())
    process.start()
    await process.ready()
    for kind, call_id in calls.items():
        entries = await process.wait(call_id, None, timeout=10)
        have = words(entries)
        finals = [s for s in have if s in st.FINAL]
        assert finals == ["FINISH"] and have[-1] == "FINISH", (kind, entries, process.logs())
        assert not any("not resumable" in (e["detail"] or "") for e in entries), (kind, entries)
        assert_kept(before[call_id], entries)
        if kind in ("click-to-call", "group"):
            assert_one_final(entries)


@pytest_twisted.ensureDeferred
async def test_agi_app_killed_under_load_drops_no_call(sandbox, process):
    """Calls placed about three a second, every phone answering; agi_app
    killed with SIGKILL 3 s in and started again 3 s later, then more calls.
    A call between the operator's answer and the client's goes on in the
    dialplan without agi_app (the Originate handed it the client's dial
    string); the new process takes the calls up from the channels and the
    AMI events.  Every accepted call ends FINISH, with one final status."""
    process.start()
    await process.ready()
    operators = [f"100{n}" for n in range(10)]
    for number in operators:
        sandbox.phones.start(number, answer(after=1.0))
    phones = [f"3806399500{n:02d}" for n in range(18)]
    # one rule for all (a change of the PSTN's rules restarts it)
    sandbox.pstn.set_default(answer_after=1.0, hangup_after=2)
    placed: list[str] = []

    async def place_some(count: int, first: int) -> None:
        for n in range(first, first + count):
            phone = phones[n]
            placed.append(await process.place(
                sip=operators[n % len(operators)], phone=phone, order_id="f-load",
                external_key=f"k-load-{n}",
            ))  # fmt: skip
            await task.deferLater(reactor(), 0.33, lambda: None)

    await place_some(9, 0)
    process.kill()
    await task.deferLater(reactor(), 3.0, lambda: None)
    process.start()
    await process.ready()
    await place_some(9, 9)
    results = {c: await process.wait(c, None, timeout=30) for c in placed}
    finals = {c: [s for s in words(e) if s in st.FINAL] for c, e in results.items()}
    assert all(f == ["FINISH"] for f in finals.values()), (finals, process.logs())
    for entries in results.values():
        assert_one_final(entries)
