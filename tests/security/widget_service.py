"""The real agi_app service for the widget's security tests.

The whole :class:`~agi_app.app.Application` runs on the test's reactor and
listens on loopback (HTTP, WebSocket, FastAGI); its PBX is the
:class:`~agi_app.ami.testing.FakeAMIServer` on a loopback TCP port, which
speaks real AMI bytes and emits the events Asterisk 22 emits for a call
(:class:`Calls`), so the call tracker, call control and the widget hub all
do their real work without a sandbox PBX -- tests/security can run beside
tests/e2e in one session.  Every port is taken fresh from the system.
"""

from __future__ import annotations

import itertools
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import defer, protocol

from agi_app.ami.testing import FakeAMIServer
from agi_app.app import Application
from agi_app.config import load
from agi_app.ws import tokens

SECRET = "widget-token-secret-for-tests"
AMI_USER, AMI_SECRET = "agi_app", "s3cret"
STATES = {"Down": "0", "Ring": "4", "Ringing": "5", "Up": "6"}


def reactor() -> Any:
    from twisted.internet import reactor as r

    return r


def free_port() -> int:
    """A loopback TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Listening(protocol.Factory):
    """The fake PBX behind a real listening port."""

    def __init__(self, pbx: FakeAMIServer):
        self.pbx = pbx

    def buildProtocol(self, addr: Any) -> protocol.Protocol:
        return self.pbx.buildProtocol(addr)


class Calls:
    """Calls on the fake PBX, with the events Asterisk 22 sends for them
    (field names as recorded on the sandbox; see tests/unit/test_tracker.py)."""

    def __init__(self, pbx: FakeAMIServer):
        self.pbx = pbx
        self.snaps: dict[str, dict[str, str]] = {}
        self._numbers = itertools.count(1)

    def _pairs(self, uid: str, prefix: str = "") -> list[tuple[str, str]]:
        pairs = [(prefix + k, v) for k, v in self.snaps[uid].items()]
        return pairs + [(prefix + "ChanVariable", "AGI_APP_CALL_ID=")]

    def _new(self, name: str, uid: str, state: str, linkedid: str, **fields: str) -> None:
        self.snaps[uid] = {
            "Channel": name, "ChannelState": STATES[state], "ChannelStateDesc": state,
            "CallerIDNum": "<unknown>", "CallerIDName": "<unknown>",
            "ConnectedLineNum": "<unknown>", "ConnectedLineName": "<unknown>",
            "Language": "en", "AccountCode": "", "Context": "default", "Exten": "s",
            "Priority": "1", "Uniqueid": uid, "Linkedid": linkedid, **fields,
        }  # fmt: skip
        self.pbx.channels[uid] = self._pairs(uid)
        self.pbx.emit("Newchannel", self._pairs(uid))

    def _state(self, uid: str, state: str) -> None:
        self.snaps[uid].update(ChannelState=STATES[state], ChannelStateDesc=state)
        self.pbx.emit("Newstate", self._pairs(uid))

    def client_calls(self, extension: str, *, answer: bool = True) -> str:
        """A client on the trunk calls in and ``extension`` is rung (and
        answers): returns the call's id (its ``call_api_id``)."""
        n = next(self._numbers)
        trunk, leg = f"1795000000.{n}0", f"1795000000.{n}1"
        client = {"CallerIDNum": "380501234567", "CallerIDName": "Client"}
        self._new(f"PJSIP/pstn-{n:08x}", trunk, "Ring", trunk, Context="from-pstn",
                  Exten="0443334023", **client)  # fmt: skip
        self._state(trunk, "Up")
        self._new(f"PJSIP/{extension}-{n:08x}", leg, "Down", trunk, Context="operators",
                  Exten=extension, CallerIDNum=extension,
                  ConnectedLineNum=client["CallerIDNum"])  # fmt: skip
        dial = self._pairs(trunk) + self._pairs(leg, "Dest")
        self.pbx.emit("DialBegin", dial + [("DialString", extension)])
        self._state(leg, "Ringing")
        if answer:
            self._state(leg, "Up")
            self.pbx.emit("DialEnd", dial + [("DialStatus", "ANSWER")])
            for i, uid in enumerate((leg, trunk), 1):
                bridge = [("BridgeUniqueid", f"br-{n}"), ("BridgeNumChannels", str(i))]
                self.pbx.emit("BridgeEnter", self._pairs(uid) + bridge)
        return trunk

    def hang_up(self, call: str) -> None:
        """Every channel of ``call`` hangs up."""
        for uid in [u for u, s in self.snaps.items() if s["Linkedid"] == call]:
            self.pbx.channels.pop(uid, None)
            self.pbx.emit("Hangup", self._pairs(uid) + [("Cause", "16"), ("Cause-txt", "")])
            del self.snaps[uid]


@dataclass
class Service:
    """A running agi_app and its fake PBX."""

    app: Application
    pbx: FakeAMIServer
    calls: Calls
    http_port: int
    ws_port: int
    _ami_port: Any

    @property
    def base(self) -> str:
        """The HTTP API's base URL (also the public_url)."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def ws_url(self) -> str:
        """The widget's WebSocket URL."""
        return f"ws://127.0.0.1:{self.ws_port}"

    @property
    def hub(self) -> Any:
        """The widget hub (its ``refusals`` say why connections were refused)."""
        return self.app.events.hub

    def token(self, sip: str, ttl: int = 600, *, secret: str = SECRET, expires=None) -> str:
        """A widget token of ``sip`` (``expires``: an absolute unix time, past ones too)."""
        if expires is None:
            expires = int(reactor().seconds()) + ttl
        return tokens.mint(secret, sip, expires)

    def redirects(self) -> list[Any]:
        """The transfers that reached the PBX (AMI Redirect actions)."""
        return self.pbx.actions_named("Redirect")

    async def stop(self) -> None:
        await self.app.stop()
        await defer.maybeDeferred(self._ami_port.stopListening)


async def start_service(tmp_path: Path, **settings: str) -> Service:
    """Start agi_app on fresh loopback ports with widget tokens enabled;
    ``settings``: more ``AGI_APP_*`` overrides."""
    r = reactor()
    pbx = FakeAMIServer(users={AMI_USER: AMI_SECRET}, clock=r)
    pbx.device_states.update({f"PJSIP/{ext}": "NOT_INUSE" for ext in ("1000", "1001", "1002")})
    pbx.device_states["PJSIP/pstn"] = "NOT_INUSE"
    ami_port = r.listenTCP(0, _Listening(pbx), interface="127.0.0.1")
    http_port, ws_port, agi_port = free_port(), free_port(), free_port()
    env = {
        "AGI_APP_AMI_HOST": "127.0.0.1",
        "AGI_APP_AMI_PORT": str(ami_port.getHost().port),
        "AGI_APP_AMI_USERNAME": AMI_USER,
        "AGI_APP_AMI_SECRET": AMI_SECRET,
        "AGI_APP_AGI_LISTEN": f"tcp:{agi_port}:interface=127.0.0.1",
        "AGI_APP_HTTP_LISTEN": f"tcp:{http_port}:interface=127.0.0.1",
        "AGI_APP_HTTP_PUBLIC_URL": f"http://127.0.0.1:{http_port}",
        "AGI_APP_WEBSOCKET_LISTEN": f"tcp:{ws_port}:interface=127.0.0.1",
        "AGI_APP_WEBSOCKET_TOKEN_SECRET": SECRET,
        "AGI_APP_STORE_PATH": str(tmp_path / "agi_app.sqlite3"),
        "AGI_APP_IVR_PATH": str(tmp_path / "ivr.conf"),
        "AGI_APP_DIALING_RECORDINGS_DIR": str(tmp_path / "recordings"),
    }
    env.update(settings)
    app = Application(load(None, environ=env), r)
    try:
        await app.start()
        await app.ami.when_connected().addTimeout(10, r)
    except BaseException:
        await app.stop()
        await defer.maybeDeferred(ami_port.stopListening)
        raise
    return Service(app, pbx, Calls(pbx), http_port, ws_port, ami_port)


async def until(predicate: Any, timeout: float = 5.0) -> None:
    """Wait for ``predicate()`` to hold (state that changes on the reactor)."""
    from twisted.internet import task

    r = reactor()
    deadline = r.seconds() + timeout
    while not predicate():
        if r.seconds() > deadline:
            raise AssertionError("condition not met in time")
        await task.deferLater(r, 0.02, lambda: None)


# -- headless Chromium --------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"


def browser_missing() -> str | None:
    """Why headless Chromium cannot run here, or None."""
    import shutil

    try:
        import playwright  # noqa: F401
    except ImportError:
        return "the playwright package is not installed"
    if not shutil.which(CHROMIUM):
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    return None


class BrowserThread:
    """Debian's Chromium driven by Playwright's blocking API from one thread
    of its own (that API belongs to the thread that started it), while the
    service runs on the reactor.  :meth:`run` hands the thread a function of
    the browser and fires with its result.

    Every host name resolves to 127.0.0.1 inside this browser, so a page can
    be loaded from a foreign origin (``http://crm.test:PORT``) that is in
    fact agi_app on loopback, and nothing ever leaves the machine.
    """

    def __init__(self) -> None:
        import queue
        import threading

        self._jobs: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="chromium", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        from playwright.sync_api import sync_playwright

        pw = browser = None
        broken: BaseException | None = None
        try:
            pw = sync_playwright().start()
            browser = pw.chromium.launch(
                executable_path=CHROMIUM,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                      "--disable-component-update", "--disable-sync", "--no-first-run",
                      "--host-resolver-rules=MAP * 127.0.0.1"],
            )  # fmt: skip
        except BaseException as e:  # noqa: BLE001 - every job is told
            broken = e
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                fn, d = job
                try:
                    if broken is not None:
                        raise RuntimeError(f"Chromium did not start: {broken}")
                    result = fn(browser)
                except BaseException as e:  # noqa: BLE001 - handed to the test
                    reactor().callFromThread(d.errback, e)
                else:
                    reactor().callFromThread(d.callback, result)
        finally:
            if browser is not None:
                browser.close()
            if pw is not None:
                pw.stop()

    def run(self, fn: Any) -> defer.Deferred:
        """Run ``fn(browser)`` in the browser's thread."""
        d: defer.Deferred = defer.Deferred()
        self._jobs.put((fn, d))
        return d

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join(30)


def in_reactor(fn: Any, *args: Any) -> Any:
    """From the browser's thread: run ``fn`` (a function, or a coroutine
    function) on the reactor and wait for its result."""
    import inspect

    from twisted.internet.threads import blockingCallFromThread

    def call() -> defer.Deferred:
        result = fn(*args)
        if inspect.iscoroutine(result):
            return defer.ensureDeferred(result)
        return defer.succeed(result)

    return blockingCallFromThread(reactor(), call)
