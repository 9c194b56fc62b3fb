"""A throwaway PostgreSQL server for tests and benchmarks:
:class:`ThrowawayCluster` makes a new cluster in a temporary folder
(``initdb``), starts it on a free loopback port (``pg_ctl``), hands out
fresh databases on it, and removes everything when it stops.

It needs the server binaries (Debian's ``postgresql`` package puts them
under ``/usr/lib/postgresql/<version>/bin``; ``AGI_APP_PG_BIN`` names
another folder).  PostgreSQL refuses to run as root: as root the cluster
belongs to the ``postgres`` user the package creates (the commands run
through ``runuser``), so the temporary folder is handed to that user.
:func:`missing_prerequisites` says what is missing, if anything.

The server listens on 127.0.0.1 only, trusts every local connection (it
holds nothing but test data) and, by default, trades durability for speed
(``fsync=off``): a crash of the machine loses it, which for a throwaway
cluster does not matter.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

_T = TypeVar("_T")

__all__ = [
    "ClusterError",
    "Handover",
    "ThrowawayCluster",
    "find_bin_dir",
    "missing_prerequisites",
    "settled",
]

#: the user that owns the cluster when the tests run as root
SERVER_USER = "postgres"
#: the superuser initdb creates (trusted: no password)
SUPERUSER = "agi_app"

#: settings of a cluster that only has to be quick
FAST_SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
}


class ClusterError(RuntimeError):
    """The throwaway cluster could not be made or started."""


# Stops the cluster and removes its folder once its standard input closes:
# when the process that started the cluster ends, however it ends (even
# SIGKILL), no server is left running.
_WATCHDOG = """
import shutil, subprocess, sys
sys.stdin.read()
subprocess.run(sys.argv[1:-1], capture_output=True, check=False)
shutil.rmtree(sys.argv[-1], ignore_errors=True)
"""


def _version(path: Path) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"[0-9]+", path.parent.name)) or (0,)


def find_bin_dir() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``: ``AGI_APP_PG_BIN``, the newest
    ``/usr/lib/postgresql/<version>/bin``, or the ``PATH``; None if none has them."""
    wanted = ("initdb", "pg_ctl")
    given = os.environ.get("AGI_APP_PG_BIN")
    candidates = [Path(given)] if given else []
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version, reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for folder in candidates:
        if all((folder / name).is_file() for name in wanted):
            return folder
    return None


def _server_user() -> pwd.struct_passwd | None:
    """The user the server runs as: None for this process's own user (not
    root), the ``postgres`` user as root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise ClusterError(
            f"running as root and there is no {SERVER_USER!r} user to run PostgreSQL as "
            "(Debian's postgresql package creates it)"
        ) from None


def missing_prerequisites() -> str | None:
    """Why a throwaway cluster cannot be made here, or None when it can."""
    if find_bin_dir() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql"
    try:
        _server_user()
    except ClusterError as e:
        return str(e)
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root and runuser is missing"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThrowawayCluster:
    """A PostgreSQL cluster of its own for the life of a ``with`` block (or
    between :meth:`start` and :meth:`stop`).

    ``settings`` are server settings (``-c name=value``), by default
    :data:`FAST_SETTINGS`; ``port`` a fixed port (default: a free one).
    :attr:`url` is the URL of its ``postgres`` database; :meth:`new_database`
    makes an empty database and returns its URL.
    """

    def __init__(
        self,
        *,
        settings: Mapping[str, str] | None = None,
        port: int | None = None,
        bin_dir: Path | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self.settings = dict(FAST_SETTINGS if settings is None else settings)
        self._fixed_port = port
        self.bin_dir = bin_dir
        self.start_timeout = start_timeout
        self.port: int | None = None
        self.folder: Path | None = None
        self._user: pwd.struct_passwd | None = None
        self._shared_database = False

    # -- lifetime ---------------------------------------------------------

    def __enter__(self) -> ThrowawayCluster:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def data_dir(self) -> Path:
        assert self.folder is not None, "cluster not started"
        return self.folder / "data"

    def start(self) -> None:
        """initdb in a new temporary folder and start the server (blocking;
        about two seconds).  Raises :class:`ClusterError`."""
        if self.folder is not None:
            raise ClusterError("cluster already started")
        if self.bin_dir is None:
            self.bin_dir = find_bin_dir()
            if self.bin_dir is None:
                raise ClusterError(missing_prerequisites() or "PostgreSQL not found")
        self._user = _server_user()
        self.folder = Path(tempfile.mkdtemp(prefix="agi_app-pg-"))
        try:
            if self._user is not None:
                os.chown(self.folder, self._user.pw_uid, self._user.pw_gid)
            self._command(
                "initdb", "-D", str(self.data_dir), "-A", "trust", "-U", SUPERUSER,
                "-E", "UTF8", "--locale=C", "--no-sync",
            )  # fmt: skip
            self._start_server()
            self._watchdog = subprocess.Popen(
                [sys.executable, "-c", _WATCHDOG,
                 *self._argv("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "stop"),
                 str(self.folder)],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C of the tests must not stop it first
            )  # fmt: skip
        except BaseException:
            self.stop()
            raise

    def _start_server(self) -> None:
        tries = 1 if self._fixed_port else 5
        for attempt in range(tries):
            port = self._fixed_port or _free_port()
            options = [f"-p {port}", f"-k {self.folder}", "-c listen_addresses=127.0.0.1"]
            options += [f"-c {name}={value}" for name, value in self.settings.items()]
            try:
                self._command(
                    "pg_ctl", "-D", str(self.data_dir), "-l", str(self.folder / "server.log"),
                    "-o", " ".join(options), "-w", "-t", str(int(self.start_timeout)), "start",
                )  # fmt: skip
            except ClusterError:
                # Most likely another process took the port meanwhile.
                if attempt == tries - 1:
                    raise
                continue
            self.port = port
            return

    def stop(self) -> None:
        """Stop the server at once and remove its folder."""
        if self.folder is None:
            return
        try:
            if self.port is not None:
                self._command("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "stop")
        finally:
            self._remove()
            if self._watchdog is not None:
                self._watchdog.stdin.close()  # its work is done already
                self._watchdog.wait()
                self._watchdog = None

    def _remove(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.folder = None
        self.port = None
        self._shared_database = False

    def _argv(self, program: str, *args: str) -> list[str]:
        assert self.bin_dir is not None
        argv = [str(self.bin_dir / program), *args]
        if self._user is not None:
            argv = ["runuser", "-u", self._user.pw_name, "--", *argv]
        return argv

    def _command(self, program: str, *args: str) -> None:
        argv = self._argv(program, *args)
        done = subprocess.run(argv, capture_output=True, text=True, cwd="/", check=False)
        if done.returncode != 0:
            log = ""
            if self.folder is not None and (self.folder / "server.log").is_file():
                log = (self.folder / "server.log").read_text(errors="replace")[-2000:]
            raise ClusterError(
                f"{program} failed ({done.returncode}): {done.stderr.strip()[-2000:]}\n{log}"
            )

    # -- databases --------------------------------------------------------

    def url_of(self, database: str) -> str:
        """The URL of a database of this cluster."""
        if self.port is None:
            raise ClusterError("cluster not started")
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{quote(database, safe='')}"

    @property
    def url(self) -> str:
        """The URL of the cluster's ``postgres`` database."""
        return self.url_of("postgres")

    def new_database(self, prefix: str = "t") -> str:
        """Make an empty database with a new name and return its URL (about
        0.2 s: for many small stores, :meth:`new_schema` is quicker)."""
        return create_database(self.url, prefix)

    def new_schema(self, prefix: str = "s") -> str:
        """Make an empty schema with a new name in the cluster's ``agi_app``
        database and return a URL whose connections use it (``search_path``):
        a store opened on it has tables of its own, made in well under a
        millisecond."""
        import psycopg
        from psycopg import sql

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        database = self.url_of(SUPERUSER)
        if not self._shared_database:
            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(SUPERUSER)))
            self._shared_database = True
        with psycopg.connect(database, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        return f"{database}?options=-csearch_path%3D{name}"


def create_database(server_url: str, prefix: str = "t") -> str:
    """Make an empty database with a new name on the server of
    ``server_url`` (the ``postgresql://`` URL of any of its databases, as a
    user that may create databases) and return the new database's URL."""
    import psycopg
    from psycopg import sql

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return urlunsplit(urlsplit(server_url)._replace(path="/" + name))


# -- a store on PostgreSQL without a running reactor ---------------------------------


class Handover:
    """The ``reactor`` of a PostgresStore used outside the reactor (tests
    written in the style of :class:`agi_app.store.testing.MemoryStore`): it
    hands each result over in a thread of its own, where :func:`settled`
    waits for it (not in the store's thread, which ``close()`` joins)."""

    def callFromThread(self, f: Callable[..., object], *args: Any, **kwargs: Any) -> None:
        """Run ``f`` in a new thread."""
        threading.Thread(target=f, args=args, kwargs=kwargs).start()


def settled(d: Deferred[_T], timeout: float = 30) -> _T:
    """The result of ``d``, waiting up to ``timeout`` seconds for it (a
    Deferred of a MemoryStore has fired already; one of a PostgresStore
    with a :class:`Handover` fires in another thread); its failure raised."""
    done = threading.Event()
    outcome: list[Any] = []

    def keep(result: Any) -> None:
        outcome.append(result)
        done.set()

    d.addBoth(keep)
    assert done.wait(timeout), f"{d!r} has not fired"
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]
