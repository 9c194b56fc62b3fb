"""Relative paths written in the configuration file are taken from the
file's folder (docs/operations.md, CHANGELOG.md 0.2.0); the old reading (the
working directory) still finds a store or menu file that exists only there."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from agi_app.config import FILE_PATHS, load


def _write(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "agi_app.conf"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory that is not the configuration's folder."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def test_relative_paths_in_the_file_are_taken_beside_it(tmp_path: Path, elsewhere: Path) -> None:
    conf = _write(tmp_path / "etc", "[store]\npath = data/calls.sqlite3\n[ivr]\npath = menus.conf\n"
                  "[dialing]\nrecordings_dir = rec\n")
    cfg = load(conf, environ={})
    assert cfg.store.path == str(tmp_path / "etc" / "data" / "calls.sqlite3")
    assert cfg.ivr.path == str(tmp_path / "etc" / "menus.conf")
    assert cfg.dialing.recordings_dir == str(tmp_path / "etc" / "rec")
    assert cfg.legacy_paths == ()


def test_absolute_paths_and_the_pbx_view_are_kept(tmp_path: Path, elsewhere: Path) -> None:
    conf = _write(tmp_path / "etc", "[store]\npath = /var/lib/x.sqlite3\n"
                  "[dialing]\npbx_recordings_dir = monitor\n")
    cfg = load(conf, environ={})
    assert cfg.store.path == "/var/lib/x.sqlite3"
    assert cfg.dialing.pbx_recordings_dir == "monitor"  # Asterisk's folder, not ours
    assert ("dialing", "pbx_recordings_dir") not in FILE_PATHS


def test_defaults_and_environment_values_stay_with_the_working_directory(
    tmp_path: Path, elsewhere: Path
) -> None:
    conf = _write(tmp_path / "etc", "")
    cfg = load(conf, environ={"AGI_APP_IVR_PATH": "env-menus.conf"})
    assert cfg.store.path == "var/agi_app.sqlite3"
    assert cfg.ivr.path == "env-menus.conf"


def test_a_file_found_only_in_the_working_directory_is_kept(
    tmp_path: Path, elsewhere: Path
) -> None:
    (elsewhere / "var").mkdir()
    (elsewhere / "var" / "agi_app.sqlite3").write_bytes(b"")
    (elsewhere / "ivr.conf").write_text("", encoding="utf-8")
    conf = _write(tmp_path / "etc", "[store]\npath = var/agi_app.sqlite3\n[ivr]\npath = ivr.conf\n")
    cfg = load(conf, environ={})
    assert cfg.store.path == str(elsewhere / "var" / "agi_app.sqlite3")
    assert cfg.ivr.path == str(elsewhere / "ivr.conf")
    assert [where for where, _ in cfg.legacy_paths] == ["[store] path", "[ivr] path"]


def test_beside_the_file_wins_when_both_exist(tmp_path: Path, elsewhere: Path) -> None:
    (elsewhere / "ivr.conf").write_text("", encoding="utf-8")
    conf = _write(tmp_path / "etc", "[ivr]\npath = ivr.conf\n")
    (tmp_path / "etc" / "ivr.conf").write_text("", encoding="utf-8")
    cfg = load(conf, environ={})
    assert cfg.ivr.path == str(tmp_path / "etc" / "ivr.conf")
    assert cfg.legacy_paths == ()


def test_from_the_files_own_folder_a_path_stays_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = _write(tmp_path, "[store]\npath = var/x.sqlite3\n")
    monkeypatch.chdir(tmp_path)
    assert load(conf, environ={}).store.path == "var/x.sqlite3"


def test_a_kept_old_path_is_logged_as_a_warning(tmp_path: Path, elsewhere: Path) -> None:
    (elsewhere / "ivr.conf").write_text("", encoding="utf-8")
    conf = _write(tmp_path / "etc", "[ivr]\npath = ivr.conf\n")
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        load(conf, environ={})
    finally:
        globalLogPublisher.removeObserver(events.append)
    warnings = [formatEvent(e) for e in events
                if e.get("log_namespace") == "agi_app.config" and e["log_level"] == LogLevel.warn]
    assert warnings == [
        f"[ivr] path: a relative path is now taken from the configuration file's folder; "
        f"kept {elsewhere / 'ivr.conf'} (found in the working directory only): write the "
        "absolute path"
    ]
