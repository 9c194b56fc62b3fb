"""Operations tooling without a PBX: the ``[metrics]`` and ``[log]`` sections,
JSON log lines, the online backup of the store, and the systemd unit."""

from __future__ import annotations

import configparser
import io
import json
import shutil
import sqlite3
import subprocess
import threading
from pathlib import Path

import pytest
from twisted.logger import Logger, LoggingFile, LogLevel
from twisted.python.failure import Failure

from agi_app import cli
from agi_app.config import ConfigError, DialingConfig, load
from agi_app.logs import JSONLineFormatter, service_log_observer
from agi_app.store import StoreError
from agi_app.store.backup import backup
from agi_app.store.schema import migrate

ROOT = Path(__file__).resolve().parents[2]
T0 = 1795640677.123  # 2026-11-25T21:04:37.123Z

# -- configuration ---------------------------------------------------------------------


def test_metrics_and_log_defaults_and_overrides(tmp_path):
    config = load(None, environ={})
    assert config.metrics.open is False
    assert (config.log.level, config.log.format) == ("info", "text")
    ini = tmp_path / "agi_app.conf"
    ini.write_text("[metrics]\nopen = yes\n[log]\nformat = json\n")
    config = load(ini, environ={"AGI_APP_LOG_LEVEL": "warn"})
    assert config.metrics.open is True
    assert (config.log.level, config.log.format) == ("warn", "json")


@pytest.mark.parametrize("env,key", [
    ({"AGI_APP_METRICS_OPEN": "maybe"}, "[metrics] open"),
    ({"AGI_APP_LOG_FORMAT": "xml"}, "[log] format"),
    ({"AGI_APP_LOG_LEVEL": "loud"}, "[log] level"),
])  # fmt: skip
def test_bad_values_name_their_key(env, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load(None, environ=env)


# -- JSON log lines -----------------------------------------------------------------------


def _events(publish) -> list[dict]:
    seen: list[dict] = []
    publish(Logger(namespace="agi_app.calls", observer=seen.append), seen.append)
    return seen


def test_json_lines_carry_time_level_text_and_fields():
    def publish(log, observer):
        log.info("call {call_id} placed", call_id="c-1", attempt=2, obj=object())
        try:
            raise ZeroDivisionError("division by zero")
        except ZeroDivisionError:
            log.failure("it failed\non two lines", Failure(), call_id="c-2")
        access = LoggingFile(Logger(namespace="twisted.python.log", observer=observer))
        access.write('"127.0.0.1" - - [25/Nov/2026:21:04:37 +0000] "GET / HTTP/1.1" 200 5\n')

    formatter = JSONLineFormatter()
    lines = [formatter({**e, "log_time": T0}) for e in _events(publish)]
    assert all(line.endswith("\n") and line.count("\n") == 1 for line in lines)
    placed, failed, access = (json.loads(line) for line in lines)
    assert placed == {"time": "2026-11-25T21:04:37.123Z", "level": "info",
                      "namespace": "agi_app.calls", "message": "call c-1 placed",
                      "call_id": "c-1", "attempt": 2}  # fmt: skip
    assert failed["level"] == "critical" and failed["message"] == "it failed\non two lines"
    assert failed["error"] == "ZeroDivisionError: division by zero"
    assert "Traceback" in failed["traceback"] and failed["call_id"] == "c-2"
    assert access["namespace"] == "twisted.python.log"
    assert access["message"].endswith('"GET / HTTP/1.1" 200 5')


def test_the_json_observer_filters_by_level():
    out = io.StringIO()
    log = Logger(namespace="agi_app", observer=service_log_observer(out, LogLevel.warn, "json"))
    log.info("not shown")
    log.warn("shown {n}", n=1)
    [line] = out.getvalue().splitlines()
    assert json.loads(line)["message"] == "shown 1"


# -- online backup --------------------------------------------------------------------------


def _store(path: Path) -> None:
    """A store file with the application's schema (WAL) and a table of rows."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    migrate(conn)
    conn.execute("CREATE TABLE t (n INTEGER)")
    conn.executemany("INSERT INTO t VALUES (?)", [(n,) for n in range(1000)])
    conn.close()


def test_a_backup_is_a_consistent_copy_while_the_store_is_written(tmp_path):
    path = tmp_path / "agi_app.sqlite3"
    _store(path)
    writer = sqlite3.connect(path, check_same_thread=False)
    writer.execute("PRAGMA journal_mode=WAL")
    stop = threading.Event()

    def write() -> None:
        n = 1000
        while not stop.is_set():
            writer.execute("INSERT INTO t VALUES (?)", (n,))
            writer.commit()
            n += 1

    thread = threading.Thread(target=write)
    thread.start()
    try:
        results = [backup(path, tmp_path / f"copy{i}.sqlite3") for i in range(3)]
    finally:
        stop.set()
        thread.join()
    for done in results:
        copy = sqlite3.connect(done.path)
        count, top = copy.execute("SELECT count(*), max(n) FROM t").fetchone()
        # every committed row up to the snapshot, in order: nothing torn
        assert count == top + 1 >= 1000
        assert done.schema_version > 0 and done.size == done.path.stat().st_size
    assert not list(tmp_path.glob(".*.partial"))


def test_a_backup_refuses_what_is_not_a_store(tmp_path):
    with pytest.raises(StoreError, match="no store"):
        backup(tmp_path / "missing.sqlite3", tmp_path / "copy.sqlite3")
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"not a database" * 100)
    dest = tmp_path / "copy.sqlite3"
    dest.write_text("the previous backup")
    with pytest.raises(StoreError):
        backup(junk, dest)
    assert dest.read_text() == "the previous backup"
    with pytest.raises(StoreError, match="itself"):
        backup(junk, junk)


def test_the_backup_command(tmp_path, capsys):
    path = tmp_path / "agi_app.sqlite3"
    _store(path)
    ini = tmp_path / "agi_app.conf"
    ini.write_text(f"[store]\npath = {path}\n")
    assert cli.main(["backup", "--config", str(ini), str(tmp_path / "b.sqlite3")]) == 0
    assert "schema version" in capsys.readouterr().out
    assert cli.main(["backup", "--config", str(ini), str(tmp_path / "no/such/dir/b")]) == 1


def test_the_backup_command_refuses_a_store_in_postgresql(tmp_path, capsys):
    ini = tmp_path / "agi_app.conf"
    # never connected to: the command refuses before anything else
    ini.write_text("[store]\nurl = postgresql://agi_app:s3cret@127.0.0.1:1/agi_app\n")
    dest = tmp_path / "b.sqlite3"
    assert cli.main(["backup", "--config", str(ini), str(dest)]) == 2
    err = capsys.readouterr().err
    assert "pg_dump" in err and "SQLite" in err
    assert "s3cret" not in err
    assert not dest.exists()


# -- the systemd unit ------------------------------------------------------------------------


def _unit() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None,
                                     comment_prefixes=("#",))  # fmt: skip
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read(ROOT / "packaging" / "agi_app.service")
    return unit


def test_the_unit_runs_the_service_sandboxed_with_its_folders_writable():
    service = _unit()["Service"]
    assert service["ExecStart"].endswith("agi-app serve --config /etc/agi_app/agi_app.conf")
    assert service["Restart"] == "on-failure"
    assert service["User"] == "agi_app"
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome"):
        assert service[key] == "yes", key
    assert service["ProtectSystem"] == "strict"
    writable = service["ReadWritePaths"].split()
    # the store's folder and the default recordings folder
    assert "/var/lib/agi_app" in writable and service["StateDirectory"] == "agi_app"
    assert DialingConfig().recordings_dir in writable


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_accepts_the_unit(tmp_path):
    run = subprocess.run(["systemd-analyze", "verify", str(ROOT / "packaging/agi_app.service")],
                         capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    complaints = [line for line in (run.stdout + run.stderr).splitlines()
                  if "is not executable" not in line]  # /opt/agi_app is not installed here
    assert complaints == []


def test_the_wheel_check_script_is_valid_bash():
    # tests/e2e/test_install.py runs it
    assert subprocess.run(["bash", "-n", str(ROOT / "tools" / "check_wheel.sh")]).returncode == 0
