"""One sandbox Asterisk instance inside the shared chroot.

Several instances may share one tree: each has a name and a
:class:`~agi_app.sandbox.pbx_config.Profile` of ports, and keeps its
configuration, logs, run files, spool and recordings under
``/srv/agi_app/<name>/`` inside the chroot.  What the configuration says is
rendered by :mod:`agi_app.sandbox.pbx_config` (the project's
``dialplan/extensions.conf`` is ``#include``d, ``AGI_APP_URL`` is set in
``[globals]`` after it, an AMI user is added with
``channelvars = AGI_APP_CALL_ID``); this module lays the instance out on
disk (configuration, dialplan, prompts), runs Asterisk and talks to it.

With ``srv`` (a :class:`~agi_app.sandbox.dns.SrvZone`) the instance gets a
DNS server of its own serving the zone's ``_agi._tcp`` SRV records, and
``AGI_APP_URL`` is ``hagi://<zone>`` (FastAGI failover, see
:mod:`agi_app.sandbox.dns`).
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agi_app.sandbox import _util, dns, pbx_config
from agi_app.sandbox.pbx_config import OPERATORS, PROFILES, TRUNK, Profile
from agi_app.sandbox.provision import ProvisionError, ensure_host_packages, ensure_language_links
from agi_app.shipped import shipped_dir
from agi_app.sounds import install as install_sounds

__all__ = ["OPERATORS", "PBX", "PBXError", "PROFILES", "Profile", "TRUNK", "project_dir"]

_CHANNEL_FIELDS = (
    "channel", "context", "exten", "priority", "state", "application", "data",
    "caller_id", "accountcode", "peeraccount", "amaflags", "duration", "bridge_id",
    "uniqueid",
)  # fmt: skip


class PBXError(RuntimeError):
    """The sandbox Asterisk could not be configured, started or reached."""


def test_profile(environ: dict[str, str] | None = None) -> Profile:
    """The test suite's profile, shifted by ``AGI_APP_SANDBOX_PORT_OFFSET``
    (a multiple of 200, at most 3000) so that several test sessions on one
    machine each get their own instance and ports."""
    environ = os.environ if environ is None else environ
    raw = environ.get("AGI_APP_SANDBOX_PORT_OFFSET", "0").strip() or "0"
    if not re.fullmatch(r"[0-9]{1,4}", raw) or int(raw) % 200 or int(raw) > 3000:
        raise PBXError(
            f"AGI_APP_SANDBOX_PORT_OFFSET must be a multiple of 200, at most 3000: {raw!r}"
        )
    offset = int(raw)
    base = PROFILES["test"]
    if not offset:
        return base
    return Profile(
        f"test{offset}",
        base.ami_port + offset,
        base.sip_port + offset,
        base.agi_port + offset,
        base.phone_port + offset,
        base.pstn_port + offset,
        # RTP ranges are 1000 wide: move them by whole blocks past the base one
        base.rtp_start + 1000 * (offset // 100),
        base.rtp_end + 1000 * (offset // 100),
        base.media_port + offset,
    )


def project_dir() -> Path:
    """The folder holding ``dialplan/`` and ``sounds/`` (see
    :func:`agi_app.shipped.shipped_dir`)."""
    return shipped_dir()


def _print(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class PBX:
    """A named Asterisk instance in the chroot ``root``.

    ``recordings_dir`` is the recordings folder as the host sees it,
    ``pbx_recordings_dir`` the same folder as Asterisk sees it (they map to
    ``[dialing] recordings_dir`` and ``pbx_recordings_dir``).
    """

    def __init__(
        self,
        root: Path,
        profile: Profile,
        *,
        name: str | None = None,
        project: Path | None = None,
        ami_username: str = "agi_app",
        ami_secret: str | None = None,
        ami_read: str = pbx_config.AMI_READ["readme"],
        log: Callable[[str], None] = _print,
        faults: tuple[str, ...] = (),
        srv: dns.SrvZone | None = None,
    ) -> None:
        self.root = Path(root)
        self.profile = profile
        self.name = name or profile.name
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", self.name):
            raise PBXError(f"bad instance name {self.name!r}")
        self.project = Path(project) if project else project_dir()
        self.ami_username = ami_username
        self.ami_secret = ami_secret or os.environ.get("AGI_APP_SANDBOX_AMI_SECRET", "sandbox")
        #: the AMI user's read classes (see ``pbx_config.AMI_READ``)
        self.ami_read = ami_read
        #: settings broken on purpose (:data:`~agi_app.sandbox.pbx_config.FAULTS`)
        self.faults = faults
        #: FastAGI through ``hagi://`` and this zone's SRV records (None:
        #: ``agi://127.0.0.1:<agi_port>``); read at each start
        self.srv = srv
        self._dns: dns.DNSServer | None = None
        self._log = log
        self.pbx_dir = f"/srv/agi_app/{self.name}"
        self.host_dir = self.root / self.pbx_dir.lstrip("/")
        self.etc_dir = self.host_dir / "etc"
        self.log_dir = self.host_dir / "log"
        self.run_dir = self.host_dir / "run"
        self.phones_dir = self.host_dir / "phones"
        self.recordings_dir = self.host_dir / "monitor"
        self.pbx_recordings_dir = f"{self.pbx_dir}/monitor"
        self.conf_path = f"{self.pbx_dir}/etc/asterisk.conf"
        self.pid_file = self.host_dir / "asterisk.pid"
        self.messages_log = self.log_dir / "messages.log"
        self.boot_seconds: float | None = None
        self._proc: subprocess.Popen | None = None
        self._atexit: Callable[[], None] | None = None

    # ------------------------------------------------------------ ports

    @property
    def ami_port(self) -> int:
        return self.profile.ami_port

    @property
    def sip_port(self) -> int:
        return self.profile.sip_port

    @property
    def agi_port(self) -> int:
        return self.profile.agi_port

    # ------------------------------------------------------------ config

    def _module_dir(self) -> str:
        for inner in ("/usr/lib/x86_64-linux-gnu/asterisk/modules", "/usr/lib/asterisk/modules"):
            if (self.root / inner.lstrip("/")).is_dir():
                return inner
        found = sorted(self.root.glob("usr/lib/*/asterisk/modules"))
        if not found:
            raise PBXError(f"no Asterisk module folder in {self.root}")
        return "/" + str(found[0].relative_to(self.root))

    def configs(self) -> dict[str, str]:
        """This instance's Asterisk configuration files, ``{file name: text}``
        (see :func:`agi_app.sandbox.pbx_config.asterisk_configs`)."""
        module_dir = self._module_dir()
        return pbx_config.asterisk_configs(
            self.profile,
            name=self.name,
            pbx_dir=self.pbx_dir,
            module_dir=module_dir,
            modules=[p.name for p in (self.root / module_dir.lstrip("/")).glob("*.so")],
            ami_username=self.ami_username,
            ami_secret=self.ami_secret,
            ami_read=self.ami_read,
            faults=self.faults,
            agi_url=self.srv.url if self.srv else None,
        )

    @property
    def dns_address(self) -> str:
        """The loopback address of this instance's DNS server (``srv``)."""
        return dns.dns_address(self.ami_port)

    @property
    def dns(self) -> dns.DNSServer | None:
        """The DNS server started with ``srv`` (None without)."""
        return self._dns

    def render(self) -> None:
        """Write the instance's whole configuration and folders, copy the
        project's dialplan and prompts in.  Safe to call again."""
        for d in (
            self.etc_dir, self.log_dir, self.run_dir, self.phones_dir, self.recordings_dir,
            self.host_dir / "spool", self.host_dir / "lib" / "keys", self.host_dir / "cache",
        ):  # fmt: skip
            d.mkdir(parents=True, exist_ok=True)
        # MixMonitor with a relative file name writes to <spool>/monitor.
        spool_monitor = self.host_dir / "spool" / "monitor"
        if not spool_monitor.is_symlink():
            if spool_monitor.is_dir():
                shutil.rmtree(spool_monitor)
            spool_monitor.symlink_to("../monitor")
        for old in self.etc_dir.iterdir():
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            else:
                old.unlink()
        for name, text in self.configs().items():
            (self.etc_dir / name).write_text(text, encoding="utf-8")
        for name in pbx_config.STOCK_CONFIGS:
            stock = self.root / "etc/asterisk" / name
            if stock.is_file():
                shutil.copyfile(stock, self.etc_dir / name)
        self._copy_dialplan()
        ensure_language_links(self.root)
        self._install_sounds()
        if "prompts" in self.faults:
            self._data_without_prompts()

    def _rendered(self, name: str) -> str:
        try:
            return (self.etc_dir / name).read_text(encoding="utf-8")
        except OSError:
            return ""

    def _data_without_prompts(self) -> None:
        # Fault "prompts": Asterisk's data folder (documentation, music on
        # hold...) with an empty sounds folder, so no prompt is installed.
        data = self.host_dir / pbx_config.NO_PROMPTS_DATA_DIR
        shutil.rmtree(data, ignore_errors=True)
        (data / "sounds").mkdir(parents=True)
        for item in (self.root / "usr/share/asterisk").iterdir():
            if item.name != "sounds":
                (data / item.name).symlink_to(f"/usr/share/asterisk/{item.name}")

    def _copy_dialplan(self) -> None:
        # The chroot cannot see the checkout, so the dialplan is copied in.
        source = self.project / "dialplan"
        target = self.etc_dir / "dialplan"
        if source.is_dir():
            shutil.copytree(source, target)
        target.mkdir(exist_ok=True)
        main = target / "extensions.conf"
        if not main.is_file() or not main.read_text(errors="replace").strip():
            main.write_text("; the project's dialplan/extensions.conf is missing or empty\n")

    def _install_sounds(self) -> None:
        # The prompts go in the way an admin installs them (README step 3).
        source = self.project / "sounds"
        if source.is_dir():
            install_sounds(_util.in_root(self.root, "/usr/share/asterisk/sounds"), source)

    # ------------------------------------------------------------ process

    @property
    def pid(self) -> int | None:
        """The running Asterisk's pid, or ``None``."""
        for path in (self.pid_file, self.run_dir / "asterisk.pid"):
            try:
                pid = int(path.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            if _util.pid_alive(pid) and self.conf_path in _util.pid_cmdline(pid):
                return pid
        return None

    def is_running(self) -> bool:
        """True while this instance's Asterisk process exists."""
        return self.pid is not None

    def _asterisk(self, *args: str) -> list[str]:
        return ["chroot", str(self.root), "/usr/sbin/asterisk", "-C", self.conf_path, *args]

    def start(self, timeout: float = 30.0, stop_at_exit: bool = False) -> float:
        """Render the configuration, start Asterisk in the background and
        wait until it is fully booted.  Returns the boot time in seconds.

        An instance of the same name left running (e.g. by a killed test
        session) is stopped first.  With ``stop_at_exit`` the process is
        stopped when this Python process exits."""
        if self.is_running():
            self._log(f"sandbox: stopping the {self.name} instance left running")
            self.stop()
        busy = [
            f"{what} {port}"
            for what, port, kind in (
                ("AMI TCP port", self.ami_port, socket.SOCK_STREAM),
                ("SIP UDP port", self.sip_port, socket.SOCK_DGRAM),
            )
            if _util.port_in_use(port, kind)
        ]
        if busy:
            raise PBXError(f"cannot start the {self.name} sandbox: {', '.join(busy)} in use")
        self.render()
        argv = self._asterisk("-f", "-n")
        if self.srv is not None:
            argv = self._start_dns(argv)
        # Registrations live in the astdb: a fresh start has no operator online.
        for f in (self.host_dir / "lib").glob("astdb*"):
            f.unlink()
        for f in self.run_dir.glob("*"):
            if f.is_socket() or f.name.endswith(".pid"):
                f.unlink()
        if self.messages_log.exists():
            self.messages_log.replace(self.log_dir / "messages.log.1")
        started = time.monotonic()
        with open(self.log_dir / "asterisk.out", "ab") as out:
            # -f: stay in the foreground of our (new) session; never -c.
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        self.pid_file.write_text(f"{self._proc.pid}\n")
        if stop_at_exit and self._atexit is None:
            self._atexit = self._stop_quietly
            atexit.register(self._atexit)
        try:
            self._wait_booted(started + timeout)
        except PBXError:
            self.stop(timeout=2)
            raise
        self.boot_seconds = time.monotonic() - started
        self._log(f"sandbox: Asterisk ({self.name}) booted in {self.boot_seconds:.1f} s")
        return self.boot_seconds

    def _start_dns(self, argv: list[str]) -> list[str]:
        # The instance's own DNS server, and Asterisk started where the
        # tree's /etc/resolv.conf names it (a private mount namespace).
        server = dns.DNSServer(self.srv, self.dns_address, self.host_dir / "dns")
        try:
            if dns.missing():
                ensure_host_packages(self._log)  # a tree cached before dnsmasq was needed
            server.start()
        except (dns.DNSError, ProvisionError) as e:
            raise PBXError(f"cannot start the {self.name} sandbox's DNS server: {e}") from None
        self._dns = server
        self._log(f"sandbox: DNS for {self.srv.url} on {self.dns_address}:53")
        return dns.private_resolv_command(server.resolv_path, self.root, argv)

    def _stop_dns(self) -> None:
        # also one another process started (``agi-app sandbox stop``)
        if self._dns is not None:
            self._dns.stop()
        self._dns = None
        dns.stop_leftover(self.host_dir / "dns")

    def _wait_booted(self, deadline: float) -> None:
        ctl = self.run_dir / "asterisk.ctl"
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise PBXError(
                    f"Asterisk ({self.name}) exited with {self._proc.returncode} while "
                    f"booting; log tail:\n{self.log_tail(30)}"
                )
            if ctl.exists():
                left = max(1.0, deadline - time.monotonic())
                try:
                    r = subprocess.run(
                        self._asterisk("-rx", "core waitfullybooted"),
                        capture_output=True, text=True, timeout=left,
                    )  # fmt: skip
                except subprocess.TimeoutExpired:
                    r = None
                if r is not None and "fully booted" in r.stdout:
                    return
            if time.monotonic() > deadline:
                raise PBXError(
                    f"Asterisk ({self.name}) did not boot in time; log tail:\n{self.log_tail(30)}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop Asterisk (``core stop now``, then SIGTERM/SIGKILL)."""
        pid = self.pid or (self._proc.pid if self._proc and self._proc.poll() is None else None)
        if pid is not None:
            try:
                subprocess.run(
                    self._asterisk("-rx", "core stop now"),
                    capture_output=True, timeout=min(5.0, timeout),
                )  # fmt: skip
            except subprocess.TimeoutExpired:
                pass
            deadline = time.monotonic() + timeout
            while _util.pid_alive(pid) and time.monotonic() < deadline:
                if self._proc is not None and self._proc.poll() is not None:
                    break
                time.sleep(0.02)
            if _util.pid_alive(pid):
                _util.terminate(pid, timeout=2.0)
        if self._proc is not None:
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                _util.terminate(self._proc.pid, timeout=1.0)
            self._proc = None
        self.pid_file.unlink(missing_ok=True)
        self._stop_dns()
        if self._atexit is not None:
            atexit.unregister(self._atexit)
            self._atexit = None

    def _stop_quietly(self) -> None:
        try:
            self.stop(timeout=3)
        except Exception:  # noqa: BLE001 - interpreter exit: nothing to report to
            pass

    def restart(self, timeout: float = 30.0) -> float:
        """Stop and start again (configuration re-rendered)."""
        keep = self._atexit is not None
        self.stop()
        return self.start(timeout=timeout, stop_at_exit=keep)

    def status(self) -> dict[str, Any]:
        """What ``agi-app sandbox status`` prints."""
        info: dict[str, Any] = {
            "name": self.name,
            "running": self.is_running(),
            "pid": self.pid,
            "ami": f"127.0.0.1:{self.ami_port}",
            "sip": f"127.0.0.1:{self.sip_port}/udp",
            "fastagi_target": self.srv.url if self.srv else f"127.0.0.1:{self.agi_port}",
            "instance_dir": str(self.host_dir),
            "recordings_dir": str(self.recordings_dir),
        }
        if dns.running_pid(self.host_dir / "dns") is not None:
            # started with srv, perhaps by another process: its zone is in the dialplan
            url = re.search(r"^AGI_APP_URL = (\S+)", self._rendered("extensions.conf"), re.M)
            info["fastagi_target"] = url.group(1) if url else info["fastagi_target"]
            info["dns"] = f"{self.dns_address}:53"
        if info["running"]:
            try:
                info["uptime"] = self.cli("core show uptime seconds").strip()
                info["channels"] = len(self.channels())
            except PBXError as e:
                info["error"] = str(e)
        return info

    # ------------------------------------------------------------ CLI

    def cli(self, command: str, timeout: float = 10.0) -> str:
        """Run an Asterisk CLI command (``asterisk -rx``) and return its output."""
        try:
            r = subprocess.run(
                self._asterisk("-rx", command), capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            raise PBXError(f"CLI command {command!r} timed out after {timeout} s") from None
        if r.returncode != 0 or "Unable to connect to remote asterisk" in r.stdout:
            raise PBXError(f"CLI command {command!r} failed: {(r.stdout + r.stderr).strip()}")
        return r.stdout

    def cli_deferred(self, command: str, reactor: Any = None):
        """:meth:`cli` without blocking the reactor: a Deferred firing with the output."""
        from twisted.internet import utils

        if reactor is None:
            from twisted.internet import reactor  # the default at the outermost wiring
        argv = self._asterisk("-rx", command)
        d = utils.getProcessOutputAndValue(
            shutil.which(argv[0]) or "/usr/sbin/chroot", argv[1:], env=dict(os.environ),
            reactor=reactor,
        )  # fmt: skip

        def done(result: tuple[bytes, bytes, int]) -> str:
            out, err, code = result
            text = out.decode(errors="replace")
            if code != 0 or "Unable to connect to remote asterisk" in text:
                raise PBXError(f"CLI command {command!r} failed: {text}{err.decode()}")
            return text

        return d.addCallback(done)

    @staticmethod
    def parse_channels(text: str) -> list[dict[str, str]]:
        """Parse ``core show channels concise``."""
        out = []
        for line in text.splitlines():
            parts = line.split("!")
            if len(parts) >= len(_CHANNEL_FIELDS):
                out.append(dict(zip(_CHANNEL_FIELDS, parts, strict=False)))
        return out

    def channels(self) -> list[dict[str, str]]:
        """The live channels, one dict per ``core show channels concise`` line."""
        return self.parse_channels(self.cli("core show channels concise"))

    def channels_deferred(self, reactor: Any = None):
        """:meth:`channels` as a Deferred (does not block the reactor)."""
        return self.cli_deferred("core show channels concise", reactor).addCallback(
            self.parse_channels
        )

    def hangup_all(self) -> None:
        """Hang every channel up."""
        self.cli("channel request hangup all")

    def contacts(self) -> dict[str, str]:
        """Registered contacts: ``{aor: contact_uri}``."""
        found = {}
        for m in re.finditer(r"Contact:\s+([^/\s]+)/(\S+)", self.cli("pjsip show contacts")):
            if not m.group(1).startswith("<"):
                found[m.group(1)] = m.group(2)
        return found

    def wait_for_channels(self, count: int, timeout: float = 5.0, reactor: Any = None):
        """A Deferred firing with the channel list once exactly ``count``
        channels exist; fails with :class:`TimeoutError` after ``timeout``."""
        last: list[list[dict[str, str]]] = [[]]

        def check():
            def seen(chans):
                last[0] = chans
                return len(chans) == count

            return self.channels_deferred(reactor).addCallback(seen)

        return _util.poll(
            check,
            timeout,
            reactor,
            lambda: f"expected {count} channels, found {[c['channel'] for c in last[0]]}",
        ).addCallback(lambda _: last[0])

    def wait_for_channels_blocking(self, count: int, timeout: float = 5.0) -> list[dict]:
        """:meth:`wait_for_channels` for code without a reactor."""
        last: list[list[dict[str, str]]] = [[]]

        def check() -> bool:
            last[0] = self.channels()
            return len(last[0]) == count

        _util.poll_blocking(
            check,
            timeout,
            lambda: f"expected {count} channels, found {[c['channel'] for c in last[0]]}",
        )
        return last[0]

    def log_tail(self, lines: int = 40) -> str:
        """The end of this instance's Asterisk log (messages.log, else stdout)."""
        text = _util.tail(self.messages_log, lines)
        return text or _util.tail(self.log_dir / "asterisk.out", lines)

    # ------------------------------------------------------------ agi_app

    def agi_app_config(self) -> dict[str, str]:
        """``AGI_APP_<SECTION>_<KEY>`` overrides for an agi_app talking to this instance."""
        return pbx_config.agi_app_settings(
            self.profile,
            ami_username=self.ami_username,
            ami_secret=self.ami_secret,
            recordings_dir=str(self.recordings_dir),
            pbx_recordings_dir=self.pbx_recordings_dir,
        )

    def agi_app_ini(self) -> str:
        """The same overrides as an INI text (for ``agi-app serve --config``)."""
        return pbx_config.settings_ini(self.agi_app_config())
