"""The doctor's parts that need no PBX (the checks themselves run against the
sandbox in tests/e2e/test_doctor_e2e.py): the contexts it looks for, its FastAGI
script, its output lines, and the faults the sandbox can be rendered with."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.testing import MemoryReactorClock, StringTransport

from agi_app.agi import FastAGIFactory, ScriptRegistry
from agi_app.app import Application
from agi_app.config import load
from agi_app.doctor import (
    CHECKS,
    DOCTOR_CONTEXT,
    DOCTOR_SCRIPT,
    Check,
    Doctor,
    diagnose,
    dialplan_contexts,
    register_scripts,
)
from agi_app.sandbox import pbx
from agi_app.sandbox import pbx_config as pc
from agi_app.shipped import shipped_dir

DIALPLAN = shipped_dir() / "dialplan" / "extensions.conf"


def test_the_contexts_looked_for_are_those_of_the_shipped_dialplan():
    contexts = dialplan_contexts(DIALPLAN)
    assert contexts[0] == "agi-app-operator"
    assert DOCTOR_CONTEXT in contexts
    assert len(contexts) == len(set(contexts)) >= 10
    text = DIALPLAN.read_text()
    assert all(f"[{c}]" in text for c in contexts)
    # the doctor's context has an extension for each kind of call it places
    doctor = text[text.index(f"[{DOCTOR_CONTEXT}]"):]
    for exten in ("fastagi", "prompt", "record"):
        assert f"exten => {exten},1," in doctor


def test_contexts_in_a_file(tmp_path):
    path = tmp_path / "extensions.conf"
    path.write_text("[globals]\n[agi-app-a]\nexten => s,1,NoOp()\n ; [agi-app-comment]\n"
                    "[other]\n  [agi-app-b] ; spaced\n[agi-app-a]\n")  # fmt: skip
    assert dialplan_contexts(path) == ["agi-app-a", "agi-app-b"]


def test_lines_say_ok_or_fail_with_the_check_name():
    assert Check("ami", True, "logged in").line() == "ok   ami: logged in"
    assert Check("fastagi", False, "unreachable").line() == "FAIL fastagi: unreachable"


def test_the_application_answers_doctor_ping():
    app = Application(load(None, environ={}), MemoryReactorClock())
    assert DOCTOR_SCRIPT in app.scripts


def test_doctor_ping_reports_ok_to_the_dialplan():
    registry = ScriptRegistry()
    register_scripts(registry)
    clock = MemoryReactorClock()
    proto = FastAGIFactory(registry, clock).buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(b"agi_network: yes\nagi_network_script: doctor_ping\n"
                       b"agi_request: agi://127.0.0.1/doctor_ping\n\n")  # fmt: skip
    assert transport.value() == b'SET VARIABLE "AGI_APP_RESULT" "OK"\n'


@pytest_twisted.ensureDeferred
async def test_a_bad_configuration_fails_every_line(tmp_path):
    ini = tmp_path / "agi_app.conf"
    ini.write_text("[log]\nformat = xml\n")
    checks = await diagnose(str(ini), MemoryReactorClock())
    assert [c.name for c in checks] == list(CHECKS)
    assert not any(c.ok for c in checks)
    assert checks[0].text.startswith("[log] format")


@pytest_twisted.ensureDeferred
async def test_an_unreachable_ami_fails_every_line_after_it():
    # the port is closed on this machine: nothing listens on port 1
    from twisted.internet import reactor

    config = load(None, environ={"AGI_APP_AMI_PORT": "1"})
    checks = await Doctor(config, reactor, timeout=2).run()
    assert [c.name for c in checks] == list(CHECKS[1:])
    assert checks[0].text.startswith("cannot connect to 127.0.0.1:1")
    assert all(c.text == "not checked: no AMI session (see ami)" for c in checks[1:])


# -- the sandbox's faults -----------------------------------------------------------------


def _configs(*faults: str) -> dict[str, str]:
    return pc.asterisk_configs(
        pbx.test_profile({"AGI_APP_SANDBOX_PORT_OFFSET": "1400"}), name="f", pbx_dir="/srv/f",
        module_dir="/m", modules=[], ami_username="agi_app", ami_secret="s", faults=faults,
    )  # fmt: skip


def test_each_fault_changes_only_its_setting():
    good = _configs()
    assert "channelvars = AGI_APP_CALL_ID" in good["manager.conf"]
    assert '#include "dialplan/extensions.conf"' in good["extensions.conf"]
    assert "astdatadir => /usr/share/asterisk" in good["asterisk.conf"]
    changed = {
        "channelvars": {"manager.conf"},
        "dialplan": {"extensions.conf"},
        "prompts": {"asterisk.conf"},
        "ami_classes": {"manager.conf"},
    }
    assert set(changed) == set(pc.FAULTS)
    for fault, files in changed.items():
        broken = _configs(fault)
        assert {n for n in good if good[n] != broken[n]} == files, fault
    assert "channelvars =" not in _configs("channelvars")["manager.conf"]
    assert "#include" not in _configs("dialplan")["extensions.conf"]
    assert f"astdatadir => /srv/f/{pc.NO_PROMPTS_DATA_DIR}" in _configs("prompts")["asterisk.conf"]
    manager = _configs("ami_classes")["manager.conf"]
    assert "read = call\n" in manager and "write = call,reporting\n" in manager


def test_an_unknown_fault_is_refused():
    with pytest.raises(ValueError, match="unknown faults"):
        _configs("no-such-fault")
