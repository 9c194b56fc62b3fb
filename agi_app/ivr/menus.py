"""IVR menus from an INI file admins edit (see ``ivr.conf.example`` and docs/ivr.md).

One section per menu; the section name is the menu's name.  An optional
``[defaults]`` section gives values every menu inherits::

    [defaults]
    timeout = 5
    retries = 3
    invalid_prompt = ivr-invalid
    timeout_prompt = ivr-timeout
    goodbye_prompt = ivr-goodbye

    [main]
    prompt = ivr-main
    1 = menu sales
    2 = menu support
    0 = extension 1000
    * = repeat

    [sales]
    prompt = ivr-sales
    1 = play offer then menu sales
    9 = menu main

    [support]
    prompt = ivr-support
    then = extension 1001

Keys of a menu:

``prompt``
    the prompt played (a name in ``sounds/``: played as ``agi_app/<name>``);
``0``..``9``, ``*``, ``#``
    what a digit does (an *action*, below);
``then``
    the action when the caller presses nothing, instead of the timeout
    retries: right after the prompt in a menu without digit choices (one that
    only announces, then connects), after ``timeout`` in one with choices;
``timeout``
    seconds to wait for a digit after the prompt (1..60);
``retries``
    how many times the menu is offered: every timeout and every invalid
    digit uses one (1..10);
``invalid_prompt`` / ``timeout_prompt``
    played after an invalid digit / a timeout, before the menu again;
``goodbye_prompt``
    played before agi_app hangs up;
``exhausted``
    the action when the retries are used up (default ``hangup``).

Actions: ``menu NAME``, ``extension EXT`` (connect the caller to an
extension), ``number PHONE`` (connect to an outside number through the
default trunk), ``play PROMPT [then ACTION]`` (play a message, then the
action; by default the same menu again), ``hangup``, ``repeat``.

Everything is checked when the file is read (:class:`MenuError` names the
section and key): prompt names by :func:`agi_app.sounds.check_name`,
extensions and numbers by :mod:`agi_app.validation`, every ``menu``
reference must exist.
"""

from __future__ import annotations

import configparser
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agi_app import validation
from agi_app.sounds import check_name

__all__ = [
    "DIGITS",
    "Action",
    "Menu",
    "MenuError",
    "Menus",
    "load_menus",
    "parse_menus",
]

#: the keys a caller can press
DIGITS = "0123456789*#"
MENU_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}", re.ASCII)
_KINDS = ("menu", "extension", "number", "play", "hangup", "repeat")
_SETTINGS = {
    "prompt", "then", "timeout", "retries", "invalid_prompt", "timeout_prompt",
    "goodbye_prompt", "exhausted",
}  # fmt: skip
DEFAULTS_SECTION = "defaults"


class MenuError(ValueError):
    """The menu file is wrong; the message names the section and key."""


@dataclass(frozen=True)
class Action:
    """What a choice does.

    ``kind`` is ``menu`` (``target``: the menu), ``extension``/``number``
    (``target``: whom to connect), ``play`` (``target``: the prompt, then
    ``then``), ``hangup`` or ``repeat``.
    """

    kind: str
    target: str | None = None
    then: Action | None = None

    def describe(self) -> str:
        """The action as written in the file (used in history entries)."""
        text = self.kind if self.target is None else f"{self.kind} {self.target}"
        if self.then is not None:
            text += f" then {self.then.describe()}"
        return text


@dataclass(frozen=True)
class Menu:
    """One menu of the file."""

    name: str
    prompt: str
    choices: Mapping[str, Action] = field(default_factory=dict)
    then: Action | None = None
    timeout: int = 5
    retries: int = 3
    invalid_prompt: str | None = "ivr-invalid"
    timeout_prompt: str | None = "ivr-timeout"
    goodbye_prompt: str | None = "ivr-goodbye"
    exhausted: Action = Action("hangup")


class Menus(Mapping[str, Menu]):
    """Every menu of a file, by name; ``source`` is where they were read."""

    def __init__(self, menus: Mapping[str, Menu], source: str | None = None):
        self._menus = dict(menus)
        self.source = source

    def __getitem__(self, name: str) -> Menu:
        return self._menus[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._menus)

    def __len__(self) -> int:
        return len(self._menus)

    def __repr__(self) -> str:
        return f"<Menus {sorted(self._menus)} from {self.source}>"


def parse_action(text: str, where: str) -> Action:
    """One action (``menu sales``, ``play offer then hangup``...)."""
    words = text.split()
    if not words:
        raise MenuError(f"{where}: an action is needed ({', '.join(_KINDS)})")
    kind = words[0].lower()
    if kind not in _KINDS:
        raise MenuError(f"{where}: unknown action {words[0]!r} (known: {', '.join(_KINDS)})")
    if kind in ("hangup", "repeat"):
        if len(words) != 1:
            raise MenuError(f"{where}: {kind} takes nothing after it")
        return Action(kind)
    if len(words) < 2:
        raise MenuError(f"{where}: {kind} needs a target")
    target = words[1]
    try:
        if kind == "menu":
            if not MENU_NAME.fullmatch(target):
                raise MenuError(f"{where}: menu names are 1 to 32 of A-Z a-z 0-9 _ -")
        elif kind == "extension":
            validation.extension(target, "extension")
        elif kind == "number":
            validation.phone(target, "number")
        else:
            check_name(target, "prompt")
    except validation.InvalidInput as e:
        raise MenuError(f"{where}: {e.message}") from None
    rest = words[2:]
    if kind != "play":
        if rest:
            raise MenuError(f"{where}: unexpected {' '.join(rest)!r} after {kind} {target}")
        return Action(kind, target)
    if not rest:
        return Action(kind, target)
    if rest[0].lower() != "then" or len(rest) < 2:
        raise MenuError(f"{where}: write 'play PROMPT then ACTION'")
    then = parse_action(" ".join(rest[1:]), where)
    return Action(kind, target, then)


def _prompt(value: str, where: str, optional: bool) -> str | None:
    value = value.strip()
    if optional and value.lower() in ("", "none"):
        return None
    try:
        return check_name(value, "prompt")
    except validation.InvalidInput as e:
        raise MenuError(f"{where}: {e.message}") from None


def _number(value: str, where: str, low: int, high: int) -> int:
    try:
        n = int(value.strip())
    except ValueError:
        raise MenuError(f"{where}: expected a whole number, got {value!r}") from None
    if not low <= n <= high:
        raise MenuError(f"{where}: must be {low}..{high}")
    return n


def parse_menus(text: str, source: str = "<menus>") -> Menus:
    """Menus from the text of an INI file; raises :class:`MenuError`."""
    parser = configparser.ConfigParser(
        inline_comment_prefixes=(";",), comment_prefixes=(";",), interpolation=None,
        strict=True, default_section="\x00none",
    )  # fmt: skip
    # Keys are case-sensitive: prompt names are.
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        parser.read_string(text, source=source)
    except configparser.Error as e:
        raise MenuError(f"{source}: {e}") from None
    defaults: dict[str, str] = {}
    if parser.has_section(DEFAULTS_SECTION):
        defaults = dict(parser[DEFAULTS_SECTION])
        for key in defaults:
            if key not in _SETTINGS - {"prompt", "then"}:
                raise MenuError(f"{source}: [{DEFAULTS_SECTION}] {key}: not a default setting")
    menus: dict[str, Menu] = {}
    for name in parser.sections():
        if name == DEFAULTS_SECTION:
            continue
        if not MENU_NAME.fullmatch(name):
            raise MenuError(f"{source}: [{name}]: menu names are 1 to 32 of A-Z a-z 0-9 _ -")
        values = {**defaults, **dict(parser[name])}
        menus[name] = _menu(name, values, source)
    if not menus:
        raise MenuError(f"{source}: no menu defined")
    for menu in menus.values():
        for key, action in _actions(menu):
            _check_targets(action, menus, f"{source}: [{menu.name}] {key}")
    return Menus(menus, source)


def _menu(name: str, values: dict[str, str], source: str) -> Menu:
    where = f"{source}: [{name}]"
    choices: dict[str, Action] = {}
    settings: dict[str, object] = {}
    for key, value in values.items():
        here = f"{where} {key}"
        if key in DIGITS and len(key) == 1:
            choices[key] = parse_action(value, here)
        elif key not in _SETTINGS:
            raise MenuError(f"{here}: unknown key (a digit 0-9 * #, or one of "
                            f"{', '.join(sorted(_SETTINGS))})")
        elif key == "prompt":
            settings["prompt"] = _prompt(value, here, optional=False)
        elif key in ("invalid_prompt", "timeout_prompt", "goodbye_prompt"):
            settings[key] = _prompt(value, here, optional=True)
        elif key == "timeout":
            settings["timeout"] = _number(value, here, 1, 60)
        elif key == "retries":
            settings["retries"] = _number(value, here, 1, 10)
        elif key in ("then", "exhausted"):
            settings[key] = parse_action(value, here)
    if "prompt" not in settings:
        raise MenuError(f"{where}: prompt is required")
    if not choices and "then" not in settings:
        raise MenuError(f"{where}: a menu needs digit choices or a 'then' action")
    return Menu(name=name, choices=choices, **settings)  # type: ignore[arg-type]


def _actions(menu: Menu) -> Iterator[tuple[str, Action]]:
    yield from menu.choices.items()
    if menu.then is not None:
        yield "then", menu.then
    yield "exhausted", menu.exhausted


def _check_targets(action: Action, menus: Mapping[str, Menu], where: str) -> None:
    while action is not None:
        if action.kind == "menu" and action.target not in menus:
            raise MenuError(f"{where}: no menu [{action.target}]")
        action = action.then  # type: ignore[assignment]


def load_menus(path: str | os.PathLike) -> Menus:
    """Read and check the menu file at ``path``; raises :class:`MenuError`."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise MenuError(f"cannot read IVR menus {p}: {e}") from None
    return parse_menus(text, str(p))
