"""Small helpers shared by the sandbox modules (templates, paths, processes)."""

from __future__ import annotations

import errno
import os
import re
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

_PLACEHOLDER = re.compile(r"\{\{([a-z_][a-z0-9_]*)\}\}")


def render(text: str, values: dict[str, object]) -> str:
    """Replace ``{{name}}`` placeholders.  Asterisk dialplans and SIPp
    scenarios are full of ``${...}``/``[$...]``, so string.Template's ``$``
    syntax would collide; an unknown name is an error, not a silent blank."""

    def one(m: re.Match) -> str:
        key = m.group(1)
        if key not in values:
            raise KeyError(f"template placeholder {{{{{key}}}}} has no value")
        return str(values[key])

    return _PLACEHOLDER.sub(one, text)


def in_root(root: Path, inner: str | os.PathLike) -> Path:
    """The host path of ``inner`` as the chroot ``root`` sees it, following
    symlinks inside the tree (an absolute link such as
    ``sounds/en -> /etc/alternatives/...`` must not escape to the host)."""
    parts = [p for p in Path(inner).parts if p not in ("/", "")]
    current = Path("/")
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            current = current.parent
            continue
        candidate = current / part
        host = root / candidate.relative_to("/")
        if host.is_symlink():
            hops += 1
            if hops > 40:
                raise OSError(errno.ELOOP, "too many symlinks", str(inner))
            target = Path(os.readlink(host))
            base = Path("/") if target.is_absolute() else current
            parts = [p for p in target.parts if p not in ("/", "")] + parts
            current = base
            continue
        current = candidate
    return root / current.relative_to("/")


def pid_alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def pid_cmdline(pid: int) -> list[str]:
    """The argv of ``pid`` (empty when gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def terminate(pid: int, timeout: float = 3.0, group: bool = True) -> None:
    """SIGTERM ``pid`` (its process group when ``group``), then SIGKILL
    after ``timeout`` seconds; reaps it when it is our child."""
    kill = os.killpg if group else os.kill
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 2.0)):
        try:
            kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
                if done:
                    return
            except ChildProcessError:
                pass
            if not pid_alive(pid):
                return
            time.sleep(0.02)


def port_in_use(port: int, kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> bool:
    """True when ``host:port`` cannot be bound (someone else holds it)."""
    s = socket.socket(socket.AF_INET, kind)
    try:
        if kind == socket.SOCK_STREAM:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
    except OSError:
        return True
    finally:
        s.close()
    return False


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file ("" when absent)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 256 * lines))
            data = fh.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def poll(
    check: Callable[[], Any],
    timeout: float,
    reactor: Any = None,
    describe: Callable[[], str] | None = None,
    interval: float = 0.05,
) -> Deferred:
    """A Deferred that fires with the first true result of ``check`` (which
    may return a Deferred), polling every ``interval`` seconds on the
    reactor (never blocking it); it fails with :class:`TimeoutError` after
    ``timeout`` seconds, the message from ``describe``."""
    from twisted.internet import defer, task

    if reactor is None:
        from twisted.internet import reactor  # the default at the outermost wiring

    async def loop() -> Any:
        deadline = reactor.seconds() + timeout
        while True:
            result = await defer.maybeDeferred(check)
            if result:
                return result
            if reactor.seconds() >= deadline:
                what = describe() if describe else "condition not met"
                raise TimeoutError(f"{what} (waited {timeout} s)")
            await task.deferLater(reactor, interval, lambda: None)

    return defer.ensureDeferred(loop())


def poll_blocking(
    check: Callable[[], Any],
    timeout: float,
    describe: Callable[[], str] | None = None,
    interval: float = 0.05,
) -> Any:
    """:func:`poll` for code without a reactor: the first true result of
    ``check``, called every ``interval`` seconds; :class:`TimeoutError`
    after ``timeout`` seconds, the message from ``describe``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            what = describe() if describe else "condition not met"
            raise TimeoutError(f"{what} (waited {timeout} s)")
        time.sleep(interval)
