"""A DNS server of one sandbox instance, for FastAGI failover (``hagi://``).

``AGI(hagi://NAME/script)`` makes Asterisk (``res/res_agi.c``,
``launch_ha_netscript``) look up the SRV records of ``_agi._tcp.NAME``
with libresolv (``main/srv.c`` -> ``main/dns.c``: ``res_ninit`` +
``res_nsearch`` on every call, so ``/etc/resolv.conf`` as the Asterisk
process sees it) and connect to the targets in priority order (weights
within a priority), going on to the next one when a connect fails.

The sandbox serves those records with dnsmasq (Debian's ``dnsmasq-base``,
installed on the host) on a loopback address of the instance's own
(:func:`dns_address`), port 53 (glibc's resolv.conf takes no port), with
no upstream server: it answers the instance's records and NXDOMAIN for
every other name, and sends nothing anywhere.

Several instances share one chroot, so one ``/etc/resolv.conf`` in it
cannot point each at its own server: each Asterisk starts in a private
mount namespace (``unshare --mount``) in which the instance's own
resolv.conf is bind-mounted over the tree's (:func:`private_resolv_command`).
Nothing changes in the tree, nor for any other process.

Everything here but :class:`DNSServer` only renders text and command lines.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agi_app.sandbox import _util

__all__ = [
    "DNSError",
    "DNSServer",
    "SrvTarget",
    "SrvZone",
    "dns_address",
    "dnsmasq_conf",
    "private_resolv_command",
    "resolv_conf",
]

#: where Debian's dnsmasq-base puts the server
DNSMASQ = "/usr/sbin/dnsmasq"
#: the package that has it (a host package: it runs beside the chroot)
DNSMASQ_PACKAGE = "dnsmasq-base"
#: the SRV owner prefix Asterisk puts before a hagi:// host (SRV_PREFIX)
SRV_PREFIX = "_agi._tcp."
#: resolver options: one try of one second, as the tree's own resolv.conf
#: has (a lookup that stalls stalls a call's setup)
RESOLVER_OPTIONS = "options timeout:1 attempts:1"

_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


class DNSError(RuntimeError):
    """The instance's DNS server could not be configured or started."""


def _check_name(name: str) -> str:
    labels = name.split(".")
    if len(name) > 200 or len(labels) < 2 or not all(_LABEL.fullmatch(x) for x in labels):
        # A ':' (a port) would also make Asterisk skip the SRV lookup.
        raise ValueError(
            f"not a DNS name of two or more lower-case labels (letters, digits, '-'): {name!r}"
        )
    return name


@dataclass(frozen=True)
class SrvTarget:
    """One FastAGI server behind ``hagi://``: an SRV record's port,
    priority (lower first) and weight (share within one priority), and the
    address its target name resolves to (loopback only in the sandbox)."""

    port: int
    priority: int = 10
    weight: int = 0
    address: str = "127.0.0.1"

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ValueError(f"SRV target port out of range: {self.port}")
        for what in ("priority", "weight"):
            if not 0 <= getattr(self, what) <= 65535:
                raise ValueError(f"SRV {what} out of range 0-65535: {getattr(self, what)}")
        try:
            address = ipaddress.IPv4Address(self.address)
        except ValueError:
            raise ValueError(
                f"SRV target address is not an IPv4 address: {self.address!r}"
            ) from None
        if not address.is_loopback:
            raise ValueError(f"the sandbox serves loopback targets only: {self.address}")


@dataclass(frozen=True)
class SrvZone:
    """The name in ``hagi://NAME`` and the FastAGI servers it leads to.

    Target ``i`` (from 1) gets the name ``agi<i>.NAME`` with an A record of
    its address, and an SRV record of ``_agi._tcp.NAME`` pointing at it.
    """

    name: str
    targets: tuple[SrvTarget, ...]

    def __post_init__(self) -> None:
        _check_name(self.name)
        if not self.targets:
            raise ValueError("an SRV zone needs at least one target")
        object.__setattr__(self, "targets", tuple(self.targets))

    @property
    def service(self) -> str:
        """The SRV owner name Asterisk asks for."""
        return SRV_PREFIX + self.name

    @property
    def url(self) -> str:
        """What the dialplan's ``AGI_APP_URL`` is set to."""
        return f"hagi://{self.name}"

    def target_name(self, index: int) -> str:
        """The host name of target ``index`` (from 0)."""
        return f"agi{index + 1}.{self.name}"


def parse_target(text: str) -> SrvTarget:
    """``PORT[:PRIORITY[:WEIGHT]]`` (a FastAGI port on 127.0.0.1) as a
    :class:`SrvTarget`; priority 10 and weight 0 when left out."""
    m = re.fullmatch(r"([0-9]{1,5})(?::([0-9]{1,5}))?(?::([0-9]{1,5}))?", text.strip())
    if not m:
        raise ValueError(f"not PORT[:PRIORITY[:WEIGHT]]: {text!r}")
    port, priority, weight = m.groups()
    return SrvTarget(int(port), int(priority or 10), int(weight or 0))


def zone_name(instance: str) -> str:
    """The zone of instance ``instance``: ``fastagi.<instance>.test``
    (``.test`` is reserved for testing, RFC 2606)."""
    label = instance.lower().replace("_", "-").strip("-") or "sandbox"
    return f"fastagi.{label}.test"


def zone_for(instance: str, ports: Sequence[int], priorities: Sequence[int] = (10, 20)) -> SrvZone:
    """The zone of ``instance`` (:func:`zone_name`) with one loopback
    target per port, priorities ``priorities`` in order (the last one
    repeated)."""
    targets = tuple(
        SrvTarget(port, priorities[min(i, len(priorities) - 1)]) for i, port in enumerate(ports)
    )
    return SrvZone(zone_name(instance), targets)


def dns_address(ami_port: int) -> str:
    """The loopback address of an instance's DNS server, made from its AMI
    port (unique per instance on a machine): ``127.53.<high byte>.<low byte>``."""
    if not 1 <= ami_port <= 65535:
        raise ValueError(f"AMI port out of range: {ami_port}")
    return f"127.53.{ami_port >> 8}.{ami_port & 0xFF}"


def dnsmasq_conf(zone: SrvZone, listen: str, *, log_file: str | None = None) -> str:
    """dnsmasq's configuration: ``zone``'s SRV and A records, served on
    ``listen``:53 only, no upstream, NXDOMAIN for every other name;
    ``log_file``: log every query there."""
    if not ipaddress.IPv4Address(listen).is_loopback:
        raise ValueError(f"the sandbox DNS listens on loopback only: {listen}")
    lines = [
        f"# the sandbox's records of {zone.url}",
        "port=53",
        f"listen-address={listen}",
        # only that address (not every interface's); nothing else is opened
        "bind-interfaces",
        # no upstream server, no /etc/hosts, no /etc/resolv.conf: nothing is
        # forwarded, every name not below is answered NXDOMAIN at once
        "no-resolv",
        "no-hosts",
        "no-poll",
        "local=/#/",
        "no-negcache",
    ]
    for i, target in enumerate(zone.targets):
        host = zone.target_name(i)
        lines.append(
            f"srv-host={zone.service},{host},{target.port},{target.priority},{target.weight}"
        )
        lines.append(f"host-record={host},{target.address}")
    if log_file:
        lines += ["log-queries", f"log-facility={log_file}"]
    return "\n".join(lines) + "\n"


def resolv_conf(nameserver: str) -> str:
    """The resolv.conf an instance's Asterisk sees: only its own server."""
    ipaddress.IPv4Address(nameserver)
    return (
        f"# this sandbox instance's own DNS server\nnameserver {nameserver}\n{RESOLVER_OPTIONS}\n"
    )


def private_resolv_command(resolv: Path, root: Path, argv: Sequence[str]) -> list[str]:
    """``argv`` run in a private mount namespace in which ``resolv`` (a
    host path) is bind-mounted over the tree ``root``'s ``/etc/resolv.conf``.

    ``unshare`` and the shell ``exec`` in place, so the process started is
    ``argv``'s own (same pid); the mount is private to it and its children
    and goes away with them.
    """
    target = root / "etc" / "resolv.conf"
    script = 'mount --bind "$1" "$2" && shift 2 && exec "$@"'
    return [
        "unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script,
        "sh", str(resolv), str(target), *argv,
    ]  # fmt: skip


def missing() -> str | None:
    """Why an instance's DNS server cannot run here, or ``None``."""
    if not os.path.exists(DNSMASQ):
        return f"{DNSMASQ} is missing: apt-get install {DNSMASQ_PACKAGE}"
    if not shutil.which("unshare"):
        return "unshare(1) is missing (util-linux)"
    return None


class DNSServer:
    """dnsmasq serving ``zone`` on :func:`dns_address` for one instance,
    its files in ``folder`` (configuration, resolv.conf, query log, pid)."""

    def __init__(self, zone: SrvZone, address: str, folder: Path) -> None:
        self.zone = zone
        self.address = address
        self.folder = Path(folder)
        self.conf_path = self.folder / "dnsmasq.conf"
        self.resolv_path = self.folder / "resolv.conf"
        self.log_path = self.folder / "queries.log"
        self.pid_file = self.folder / "dnsmasq.pid"
        self._proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        """The running dnsmasq's pid (also one left by a killed session)."""
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        return running_pid(self.folder)

    def start(self, timeout: float = 5.0) -> None:
        """Write the files and start dnsmasq (one left running is stopped
        first); returns once it answers on its address."""
        reason = missing()
        if reason:
            raise DNSError(reason)
        self.stop()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(
            dnsmasq_conf(self.zone, self.address, log_file=str(self.log_path))
        )
        self.resolv_path.write_text(resolv_conf(self.address))
        if _util.port_in_use(53, socket.SOCK_DGRAM, self.address):
            raise DNSError(f"{self.address}:53/udp is in use")
        with open(self.folder / "dnsmasq.out", "ab") as out:
            # -k: in the foreground, our child; its own session so a terminal's
            # Ctrl-C reaches it only through stop()
            self._proc = subprocess.Popen(
                [DNSMASQ, "-k", f"--conf-file={self.conf_path}", "--pid-file="],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True,
            )  # fmt: skip
        self.pid_file.write_text(f"{self._proc.pid}\n")
        deadline = time.monotonic() + timeout
        while not _util.port_in_use(53, socket.SOCK_DGRAM, self.address):
            if self._proc.poll() is not None:
                raise DNSError(
                    f"dnsmasq exited with {self._proc.returncode}: "
                    f"{_util.tail(self.folder / 'dnsmasq.out', 10)}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise DNSError(f"dnsmasq did not listen on {self.address}:53 in {timeout} s")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop dnsmasq (SIGTERM, then SIGKILL)."""
        pid = self.pid
        if pid is not None:
            _util.terminate(pid, timeout=2.0)
        if self._proc is not None:
            try:
                self._proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
            self._proc = None
        stop_leftover(self.folder)

    def queries(self) -> list[str]:
        """The names asked so far, in order (from the query log)."""
        text = _util.tail(self.log_path, 2000)
        return re.findall(r"query\[\w+\] (\S+) from", text)


def running_pid(folder: Path) -> int | None:
    """The pid of the dnsmasq started with ``folder``'s files, if it runs."""
    folder = Path(folder)
    try:
        pid = int((folder / "dnsmasq.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    if _util.pid_alive(pid) and str(folder / "dnsmasq.conf") in " ".join(_util.pid_cmdline(pid)):
        return pid
    return None


def stop_leftover(folder: Path) -> None:
    """Stop the dnsmasq of ``folder`` (e.g. started by another process or
    a killed session) and forget its pid."""
    pid = running_pid(folder)
    if pid is not None:
        _util.terminate(pid, timeout=2.0)
    (Path(folder) / "dnsmasq.pid").unlink(missing_ok=True)
