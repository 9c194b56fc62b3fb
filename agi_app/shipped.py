"""Where the files shipped beside the package are: ``dialplan/`` (what an
admin includes in Asterisk's dialplan) and ``sounds/`` (the prompts).

Run from a checkout, they are the checkout's own folders; installed with
pip, they are in ``<prefix>/share/agi_app`` (``[options.data_files]`` of
``setup.cfg``).
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["INSTALLED", "shipped_dir"]

#: where pip puts them, relative to the installation's prefix
INSTALLED = Path("share") / "agi_app"


def _has_them(folder: Path) -> bool:
    return (folder / "dialplan").is_dir() or (folder / "sounds").is_dir()


def shipped_dir(prefix: str | None = None) -> Path:
    """The folder holding ``dialplan/`` and ``sounds/``: the checkout above
    the ``agi_app`` package, else the installation's ``share/agi_app``, else
    the current directory."""
    checkout = Path(__file__).resolve().parent.parent
    if _has_them(checkout):
        return checkout
    installed = Path(prefix if prefix is not None else sys.prefix) / INSTALLED
    if _has_them(installed):
        return installed
    return Path.cwd()
