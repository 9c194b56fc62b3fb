"""Which handler runs for which FastAGI script name.

A :class:`ScriptRegistry` is an ordinary object built by the wiring code (one
per FastAGI listener), never module-level state: script modules expose a
function that registers their handlers on the registry they are given,
closing over the services they need::

    def register(registry: ScriptRegistry, calls: CallService) -> None:
        @registry.script("operator-answered")
        async def operator_answered(agi: AGISession) -> None:
            call_id = agi.args[0]
            ...
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from agi_app.agi.session import AGISession

__all__ = ["ScriptRegistry", "Handler"]

#: ``async def handler(agi) -> None``, or a function returning a Deferred / None
Handler = Callable[["AGISession"], "Awaitable[Any] | Any"]
H = TypeVar("H", bound=Handler)


class ScriptRegistry:
    """Maps the script name of ``AGI(agi://host/<name>?...)`` to its handler.

    The name is the part of the URL path after the host, without the
    ``?query`` (``calls/operator-answered`` is a valid name).
    """

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(self, name: str, handler: Handler) -> None:
        """Register ``handler`` under ``name``; a name can be registered once."""
        if not isinstance(name, str) or not name or "?" in name or any(
            c.isspace() or not c.isprintable() for c in name
        ):
            raise ValueError(f"not a FastAGI script name: {name!r}")
        if not callable(handler):
            raise TypeError(f"handler for {name!r} is not callable: {handler!r}")
        if name in self._handlers:
            raise ValueError(f"FastAGI script {name!r} is already registered")
        self._handlers[name] = handler

    def script(self, name: str) -> Callable[[H], H]:
        """Decorator form of :meth:`register`; returns the function unchanged."""

        def decorate(handler: H) -> H:
            self.register(name, handler)
            return handler

        return decorate

    def get(self, name: str) -> Handler | None:
        """The handler for ``name``, or ``None``."""
        return self._handlers.get(name)

    def names(self) -> list[str]:
        """Registered script names, sorted."""
        return sorted(self._handlers)

    def __contains__(self, name: object) -> bool:
        return name in self._handlers

    def __len__(self) -> int:
        return len(self._handlers)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
