"""``agi-app doctor`` against the sandbox PBX: green on the correct setup
(with and without agi_app running), and red on exactly the right line for
each setup broken on purpose -- a PBX rendered with a fault of
:data:`agi_app.sandbox.pbx_config.FAULTS` (a second instance, on the port
offset after this session's), or an agi_app configuration that points at
the wrong place."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from callflow import reactor

from agi_app.config import load
from agi_app.doctor import CHECKS, Check, Doctor
from agi_app.sandbox import provision as prov
from agi_app.sandbox.pbx import PBX, PBXError, test_profile

AGI_APP = Path(sys.executable).with_name("agi-app")


def _config(pbx_settings: dict[str, str], tmp_path: Path, **overrides: str):
    env = {**pbx_settings, "AGI_APP_STORE_PATH": str(tmp_path / "doctor.sqlite3"), **overrides}
    return load(None, environ=env)


async def _doctor(config) -> dict[str, Check]:
    checks = await Doctor(config, reactor(), timeout=10.0).run()
    assert [c.name for c in checks] == list(CHECKS[1:])
    return {c.name: c for c in checks}


def _failed(checks: dict[str, Check]) -> set[str]:
    return {name for name, c in checks.items() if not c.ok}


def _report(checks: dict[str, Check]) -> str:
    return "\n".join(c.line() for c in checks.values())


# -- the correct setup -------------------------------------------------------------------


def test_the_command_is_green_on_the_sandbox(sandbox, tmp_path):
    ini = tmp_path / "agi_app.conf"
    ini.write_text(sandbox.pbx.agi_app_ini())
    run = subprocess.run([str(AGI_APP), "doctor", "--config", str(ini)], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = run.stdout.splitlines()
    assert run.returncode == 0, run.stdout + run.stderr
    assert [line.split(":", 1)[0].split(None, 1) for line in lines] == [
        ["ok", name] for name in CHECKS
    ], run.stdout
    assert "doctor's listener" in lines[CHECKS.index("fastagi")]


@pytest_twisted.ensureDeferred
async def test_green_with_agi_app_running(sandbox, app):
    checks = await _doctor(app.config)
    assert _failed(checks) == set(), _report(checks)
    assert "the running agi_app" in checks["fastagi"].text
    assert "en, ru" in checks["prompts"].text


# -- agi_app configured wrong ---------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_wrong_recordings_folder(sandbox, tmp_path):
    elsewhere = tmp_path / "not-the-recordings"
    elsewhere.mkdir()
    config = _config(sandbox.agi_app_config(), tmp_path,
                     AGI_APP_DIALING_RECORDINGS_DIR=str(elsewhere))  # fmt: skip
    checks = await _doctor(config)
    assert _failed(checks) == {"recordings"}, _report(checks)
    text = checks["recordings"].text
    assert str(elsewhere) in text and sandbox.pbx_recordings_dir in text
    # the file is where Asterisk wrote it; the doctor said to remove it
    left = list(Path(sandbox.recordings_dir).glob("agi-app-doctor-*.wav"))
    assert left, "MixMonitor wrote no file at all"
    for path in left:
        path.unlink()


def test_fastagi_down_makes_the_command_fail(sandbox, tmp_path):
    # Asterisk's AGI_APP_URL names the sandbox's FastAGI port; agi_app is
    # configured to listen on another one
    ini = tmp_path / "agi_app.conf"
    ini.write_text(sandbox.pbx.agi_app_ini())
    other = sandbox.agi_port + 1
    env = {**os.environ, "AGI_APP_AGI_LISTEN": f"tcp:{other}:interface=127.0.0.1"}
    run = subprocess.run([str(AGI_APP), "doctor", "--config", str(ini)], capture_output=True,
                         text=True, timeout=120, env=env)  # fmt: skip
    assert run.returncode == 1, run.stdout + run.stderr
    failed = [line for line in run.stdout.splitlines() if line.startswith("FAIL")]
    assert len(failed) == 1 and failed[0].startswith("FAIL fastagi:"), run.stdout
    assert f"port is {sandbox.agi_port}, [agi] listen's {other}" in failed[0]


def test_a_configuration_that_does_not_load(tmp_path):
    ini = tmp_path / "agi_app.conf"
    ini.write_text("[ami]\nport = 99999\n")
    run = subprocess.run([str(AGI_APP), "doctor", "--config", str(ini)], capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert run.returncode == 1
    lines = run.stdout.splitlines()
    assert lines[0].startswith("FAIL config: [ami] port"), run.stdout
    assert len(lines) == len(CHECKS)


@pytest_twisted.ensureDeferred
async def test_ami_unreachable_and_wrong_secret(sandbox, tmp_path):
    closed = await _doctor(_config(sandbox.agi_app_config(), tmp_path, AGI_APP_AMI_PORT="1"))
    assert _failed(closed) == set(CHECKS[1:])
    assert closed["ami"].text.startswith("cannot connect to 127.0.0.1:1"), closed["ami"].text
    refused = await _doctor(_config(sandbox.agi_app_config(), tmp_path,
                                    AGI_APP_AMI_SECRET="wrong"))  # fmt: skip
    assert "refused the login of 'agi_app'" in refused["ami"].text
    assert _failed(refused) == set(CHECKS[1:])


# -- the PBX configured wrong -----------------------------------------------------------------


@pytest.fixture(scope="module")
def faulty(sandbox):
    """A second sandbox instance, rendered with faults: ``faulty(*names)``
    (re)starts it with those; stopped at the end of the module."""
    offset = int(os.environ.get("AGI_APP_SANDBOX_PORT_OFFSET", "0") or 0)
    offset = offset + 200 if offset < 3000 else offset - 200
    profile = test_profile({"AGI_APP_SANDBOX_PORT_OFFSET": str(offset)})
    pbx = PBX(prov.root_dir(), profile, name=f"faults{offset}")

    def start(*faults: str) -> PBX:
        pbx.faults = faults
        try:
            pbx.restart() if pbx.is_running() else pbx.start(stop_at_exit=True)
        except PBXError as e:
            pytest.fail(f"the faulty sandbox did not start: {e}")
        return pbx

    yield start
    pbx.stop()


@pytest.mark.parametrize("fault,failing", [
    ("channelvars", {"channelvars"}),
    ("prompts", {"prompts"}),
    # no Originate, no system or user events: the doctor cannot place its calls
    ("ami_classes", {"ami write", "ami read", "channelvars", "fastagi", "prompts", "recordings"}),
    # without the dialplan the doctor's own calls cannot be made either
    ("dialplan", {"dialplan", "ami read", "channelvars", "fastagi", "prompts", "recordings"}),
])  # fmt: skip
@pytest_twisted.ensureDeferred
async def test_each_broken_pbx_setup_fails_its_line(faulty, tmp_path, fault, failing):
    pbx = faulty(fault)
    checks = await _doctor(_config(pbx.agi_app_config(), tmp_path))
    assert _failed(checks) == failing, _report(checks)
    hint = {
        "channelvars": "channelvars = AGI_APP_CALL_ID",
        "prompts": "install-sounds",
        "ami_classes": "write = call,originate,reporting",
        "dialplan": "not loaded: agi-app-operator",
    }[fault]
    assert hint in _report(checks), _report(checks)
