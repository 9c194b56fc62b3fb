"""Running IVR menus on a FastAGI session.

:class:`MenuRunner` plays a menu's prompt (any key interrupts it), waits
``timeout`` seconds for a digit, and follows the caller's choices through
the menus until the caller is to be connected somewhere (it returns a
:class:`Connect`) or the call is to end (it returns None).  Every choice,
timeout and invalid digit is reported to ``on_choice`` as one line of text
(``menu=main digit=1 -> menu sales``), which the services write to the
call's history.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from agi_app.agi.errors import AGICommandFailed, AGIHangup
from agi_app.ivr.menus import DIGITS, Action, Menu, Menus
from agi_app.sounds import playback_name

__all__ = ["Connect", "MenuRunner", "MAX_STEPS"]

#: a caller cannot loop through menus for ever (a menu of "repeat"s...)
MAX_STEPS = 100


@dataclass(frozen=True)
class Connect:
    """The caller chose to be connected: ``kind`` ``extension`` or ``number``."""

    kind: str
    target: str
    menu: str


class MenuRunner:
    """Runs menus for one caller.

    :param agi: the FastAGI session of the caller's channel
    :param menus: the menus
    :param on_choice: ``async def on_choice(text)``, called for every choice
    """

    def __init__(self, agi, menus: Menus, on_choice: Callable[[str], Awaitable[object]]):
        self.agi = agi
        self.menus = menus
        self.on_choice = on_choice
        #: the menus visited, in order
        self.path: list[str] = []

    async def run(self, start: str) -> Connect | None:
        """Run from menu ``start``; a :class:`Connect` or None (hang up).
        A hangup of the caller ends it with :class:`~agi_app.agi.errors.AGIHangup`."""
        menu = self.menus[start]
        self.path.append(menu.name)
        attempt = 1
        for _ in range(MAX_STEPS):
            digit = await self._offer(menu)
            if digit is None and menu.then is not None:
                await self.on_choice(f"menu={menu.name} -> {menu.then.describe()}")
                action = menu.then
            elif digit is None or digit not in menu.choices:
                what = "timeout" if digit is None else f"digit={digit} invalid"
                if attempt >= menu.retries:
                    await self.on_choice(
                        f"menu={menu.name} {what} (attempt {attempt} of {menu.retries}), "
                        f"retries exhausted -> {menu.exhausted.describe()}"
                    )
                    action = menu.exhausted
                else:
                    await self.on_choice(
                        f"menu={menu.name} {what} (attempt {attempt} of {menu.retries})"
                    )
                    attempt += 1
                    sorry = menu.timeout_prompt if digit is None else menu.invalid_prompt
                    await self._play(sorry, interruptible=False)
                    continue
            else:
                action = menu.choices[digit]
                await self.on_choice(f"menu={menu.name} digit={digit} -> {action.describe()}")
            outcome = await self._do(menu, action)
            if isinstance(outcome, Menu):
                if outcome is not menu or action.kind != "repeat":
                    self.path.append(outcome.name)
                menu, attempt = outcome, 1
                continue
            return outcome
        await self.on_choice(f"menu={menu.name} too many steps -> hangup")
        await self._goodbye(menu)
        return None

    async def _do(self, menu: Menu, action: Action) -> Menu | Connect | None:
        """Carry out an action: the next menu to offer, a Connect, or None."""
        while True:
            if action.kind == "menu":
                return self.menus[action.target]  # type: ignore[index]
            if action.kind == "repeat":
                return menu
            if action.kind == "hangup":
                await self._goodbye(menu)
                return None
            if action.kind in ("extension", "number"):
                return Connect(action.kind, action.target, menu.name)  # type: ignore[arg-type]
            # play PROMPT [then ACTION]: by default the same menu again
            await self._play(action.target, interruptible=False)
            if action.then is None:
                return menu
            action = action.then

    async def _offer(self, menu: Menu) -> str | None:
        """Play the prompt (any key stops it) and wait for one digit."""
        digit = await self._play(menu.prompt, interruptible=True)
        if digit:
            return digit
        if menu.then is not None and not menu.choices:
            return None
        digit = await self.agi.wait_for_digit(menu.timeout * 1000, timeout=menu.timeout + 10)
        return digit or None

    async def _play(self, prompt: str | None, interruptible: bool = True) -> str:
        """Play a prompt; the key that interrupted it, or ''.  A prompt the PBX
        lacks is skipped (the menu goes on) rather than ending the call."""
        if not prompt:
            return ""
        try:
            return await self.agi.stream_file(
                playback_name(prompt), DIGITS if interruptible else "", timeout=600
            )
        except AGIHangup:
            raise
        except AGICommandFailed:
            if self.agi.hungup:
                raise AGIHangup("channel hung up while playing") from None
            await self.agi.verbose(f"agi_app IVR: prompt agi_app/{prompt} is missing", 1)
            return ""

    async def _goodbye(self, menu: Menu) -> None:
        await self._play(menu.goodbye_prompt, interruptible=False)
