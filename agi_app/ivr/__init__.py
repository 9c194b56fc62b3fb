"""IVR menus on FastAGI.

* :mod:`agi_app.ivr.menus` -- the INI file admins edit: :func:`load_menus`,
  :class:`Menu`, :class:`Action`, :class:`MenuError`;
* :mod:`agi_app.ivr.engine` -- :class:`MenuRunner`, which plays a menu and
  follows the caller's digits;
* :mod:`agi_app.ivr.service` -- :class:`IVRService`: menus in use (re-read
  when the file changes), the FastAGI script ``ivr_incoming`` for calls from
  a trunk, and connecting a caller to the extension or number chosen.
"""

from agi_app.ivr.engine import Connect, MenuRunner
from agi_app.ivr.menus import Action, Menu, MenuError, Menus, load_menus, parse_menus
from agi_app.ivr.service import IVRService, UnknownMenu

__all__ = [
    "Action",
    "Connect",
    "IVRService",
    "Menu",
    "MenuError",
    "MenuRunner",
    "Menus",
    "UnknownMenu",
    "load_menus",
    "parse_menus",
]
