"""The wheel built offline installs into a fresh virtualenv, and ``agi-app
serve`` runs from it (tools/check_wheel.sh: /health, the widget script,
/metrics, the shipped dialplan and prompts, a clean stop on SIGTERM)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_installs_and_serves():
    # the dependencies come from this venv, so nothing is downloaded
    run = subprocess.run(
        ["bash", str(ROOT / "tools" / "check_wheel.sh"), "--offline",
         "--deps-from", sysconfig.get_paths()["purelib"]],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHON": sys.executable},
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "check_wheel: ok: stopped cleanly on SIGTERM" in run.stdout
