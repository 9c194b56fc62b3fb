"""Fixtures for end-to-end tests against the sandbox Asterisk and SIPp phones.

``sandbox`` (session scope) builds the cached Debian tree when needed and
boots the ``test`` profile once per session (its own ports: a ``make run``
sandbox may be up at the same time).  After every test that used it, its
channels are hung up, the phones the test started are stopped and the PSTN
answers every number again.  Without root or debootstrap the tests skip,
except under ``CI=true``, where they fail with the reason.

``app`` is the whole agi_app started against it (a module changes its
settings by overriding ``app_settings``), ``api`` a client of its HTTP API
and ``ami`` an AMI session of the test's own; the helpers behind them and
the waits on the call log and the PBX are in ``callflow.py``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from agi_app.sandbox import provision as prov
from agi_app.sandbox.pbx import PBX, PBXError, test_profile
from agi_app.sandbox.phones import Phone, Phones, Pstn, kill_phones

_TIMES = pytest.StashKey[dict[str, str]]()
_HERE = Path(__file__).parent


class Sandbox:
    """What a test gets: the running test PBX, its phones and shortcuts."""

    def __init__(self, pbx: PBX, phones: Phones) -> None:
        self.pbx = pbx
        self.phones = phones
        self.ami_host = "127.0.0.1"
        self.ami_port = pbx.ami_port
        self.ami_username = pbx.ami_username
        self.ami_secret = pbx.ami_secret
        self.sip_port = pbx.sip_port
        #: the port Asterisk's AGI(${AGI_APP_URL}/...) connects to
        self.agi_port = pbx.agi_port
        self.recordings_dir = pbx.recordings_dir
        self.pbx_recordings_dir = pbx.pbx_recordings_dir

    @property
    def pstn(self) -> Pstn:
        """The PSTN behind the ``pstn`` trunk (answers every number by default)."""
        return self.phones.pstn

    def operator(self, number: str) -> Phone:
        """Operator ``number``'s phone (see :meth:`Phones.start` to bring it online)."""
        return self.phones.operator(number)

    def cli(self, command: str) -> str:
        """Run an Asterisk CLI command."""
        return self.pbx.cli(command)

    def channels(self) -> list[dict[str, str]]:
        """The live channels (``core show channels concise``)."""
        return self.pbx.channels()

    def wait_for_channels(self, count: int, timeout: float = 5.0, reactor: Any = None):
        """Deferred: fires once exactly ``count`` channels exist."""
        return self.pbx.wait_for_channels(count, timeout, reactor)

    def log_tail(self, lines: int = 40) -> str:
        """The end of the Asterisk log."""
        return self.pbx.log_tail(lines)

    def agi_app_config(self) -> dict[str, str]:
        """``AGI_APP_*`` settings for an agi_app talking to this PBX."""
        return self.pbx.agi_app_config()

    def start(self) -> float:
        """Start the PBX (after :meth:`stop`); returns the boot time."""
        seconds = self.pbx.start(stop_at_exit=True)
        self.phones.pstn.start(self.phones.pstn.default)
        return seconds

    def stop(self) -> None:
        """Stop the PBX and every phone (the PSTN included)."""
        self.phones.stop_all()
        self.pbx.stop()

    def restart(self) -> float:
        """Stop and start again: no channel, no registration survives."""
        self.stop()
        return self.start()

    def reset(self) -> None:
        """Between tests: hang everything up, stop the phones a test started,
        PSTN back to answering every number."""
        if not self.pbx.is_running():
            self.start()
        self.pbx.hangup_all()
        try:
            self.pbx.wait_for_channels_blocking(0, timeout=5.0)
        except TimeoutError:
            # A channel that will not die would spoil the next test: start afresh.
            self.restart()
        self.phones.reset()
        if not self.phones.pstn.running:
            self.phones.pstn.start()


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"sandbox PBX unavailable: {reason}", pytrace=False)
    pytest.skip(f"sandbox PBX unavailable: {reason}")


@pytest.fixture(scope="session")
def sandbox(request: pytest.FixtureRequest):
    """The running test-profile PBX with its phones, shared by the session."""
    reason = prov.missing_prerequisites()
    if reason:
        _unavailable(reason)
    started = time.monotonic()
    cached = prov.is_ready(prov.root_dir())
    try:
        root = prov.provision()
    except prov.ProvisionError as e:
        _unavailable(str(e))
    provision_seconds = time.monotonic() - started
    pbx = PBX(root, test_profile())
    kill_phones(pbx)  # leftovers of a session that was killed
    try:
        boot = pbx.start(stop_at_exit=True)
    except PBXError as e:
        _unavailable(str(e))
    phones = Phones(pbx)
    phones.pstn.start()
    request.config.stash[_TIMES] = {
        "provisioning": (
            f"tree cached, checked in {provision_seconds:.2f} s"
            if cached
            else f"provisioned in {provision_seconds:.1f} s"
        ),
        "boot": f"Asterisk booted in {boot:.2f} s",
    }
    handle = Sandbox(pbx, phones)
    yield handle
    phones.stop_all()
    pbx.stop()


@pytest.fixture(scope="module")
def hagi(sandbox):
    """The session's sandbox restarted with SRV records of two FastAGI
    targets (its own port, priority 10; the next port, priority 20) and
    ``AGI_APP_URL=hagi://<zone>``, served by a dnsmasq of its own; back to
    ``agi://`` afterwards."""
    from agi_app.sandbox import dns

    reason = dns.missing()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"no DNS server for the sandbox: {reason}", pytrace=False)
        pytest.skip(f"no DNS server for the sandbox: {reason}")
    zone = dns.zone_for(sandbox.pbx.name, [sandbox.agi_port, sandbox.agi_port + 1])
    sandbox.stop()
    sandbox.pbx.srv = zone
    try:
        sandbox.start()
        yield sandbox
    finally:
        sandbox.stop()
        sandbox.pbx.srv = None
        sandbox.start()


@pytest.fixture
def api():
    """A client of the HTTP API of the agi_app a test started (see callflow.py)."""
    from callflow import Api

    return Api()


@pytest.fixture
def app_settings() -> dict[str, str]:
    """``AGI_APP_*`` settings the ``app`` fixture's agi_app gets on top of
    :func:`callflow.app_config`'s; a test module overrides this fixture to
    change them (a short ring time, API keys...)."""
    return {}


@pytest_twisted.async_yield_fixture
async def app(sandbox, tmp_path, app_settings):
    """The whole agi_app running in the test's reactor against the sandbox
    (logged in to its AMI, FastAGI on its port, HTTP API on ``HTTP_PORT``)."""
    from callflow import start_sandbox_app

    application = await start_sandbox_app(sandbox, tmp_path, **app_settings)
    yield application
    await application.stop()


@pytest_twisted.async_yield_fixture
async def ami(sandbox):
    """An AMI session of its own with the sandbox PBX, logged in (for tests
    that drive the PBX without agi_app)."""
    from callflow import reactor

    from agi_app.ami import AMIService

    service = AMIService(
        sandbox.ami_host,
        sandbox.ami_port,
        sandbox.ami_username,
        sandbox.ami_secret,
        reactor=reactor(),
        name="e2e",
    )
    service.startService()
    try:
        await service.when_connected().addTimeout(10, reactor())
        yield service
    finally:
        await service.stopService()


@pytest.fixture(autouse=True)
def _sandbox_reset(request: pytest.FixtureRequest):
    """Clean the shared sandbox after each test that used it."""
    yield
    if "sandbox" in request.fixturenames:
        handle = request.getfixturevalue("sandbox")
        handle.reset()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    handle = getattr(item, "funcargs", {}).get("sandbox")
    if report.failed and isinstance(handle, Sandbox):
        try:
            report.sections.append(("sandbox: Asterisk log (tail)", handle.log_tail(60)))
            calls = handle.phones.all_calls()
            report.sections.append(
                ("sandbox: calls the phones saw", "\n".join(f"{k}: {v}" for k, v in calls.items()))
            )
        except Exception as e:  # noqa: BLE001 - a report must never fail
            report.sections.append(("sandbox", f"could not read the sandbox state: {e}"))


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    times = config.stash.get(_TIMES, None)
    if times:
        terminalreporter.write_line(f"sandbox: {times['provisioning']}; {times['boot']}")
