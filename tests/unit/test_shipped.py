"""The dialplan and the prompts ship with the package, and are found both in
a checkout and in an installation."""

from __future__ import annotations

import configparser
from pathlib import Path

from agi_app import shipped, sounds

ROOT = Path(__file__).resolve().parents[2]


def test_setup_cfg_installs_every_shipped_file():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    patterns = {
        target: [p.strip() for p in value.replace("\n", ",").split(",") if p.strip()]
        for target, value in cfg["options.data_files"].items()
    }
    installed: dict[Path, str] = {}
    for target, globs in patterns.items():
        for pattern in globs:
            matched = sorted(ROOT.glob(pattern))
            assert matched, f"{pattern} matches nothing"
            for path in matched:
                installed[path.relative_to(ROOT)] = target
    shipped_files = [
        p.relative_to(ROOT)
        for folder in ("dialplan", "sounds")
        for p in (ROOT / folder).rglob("*")
        if p.is_file()
    ]
    assert shipped_files
    for path in shipped_files:
        assert path in installed, f"{path} is not installed"
        # each lands in the same place below share/agi_app
        assert installed[path] == str(shipped.INSTALLED / path.parent)


def test_a_checkout_uses_its_own_folders():
    assert shipped.shipped_dir() == ROOT
    assert sounds.default_source_dir() == ROOT / "sounds"


def test_an_installation_uses_share_agi_app(tmp_path, monkeypatch):
    monkeypatch.setattr(shipped, "__file__", str(tmp_path / "site" / "agi_app" / "shipped.py"))
    (tmp_path / "prefix" / "share" / "agi_app" / "sounds").mkdir(parents=True)
    assert shipped.shipped_dir(str(tmp_path / "prefix")) == tmp_path / "prefix/share/agi_app"
    monkeypatch.chdir(tmp_path)
    assert shipped.shipped_dir(str(tmp_path / "elsewhere")) == tmp_path
