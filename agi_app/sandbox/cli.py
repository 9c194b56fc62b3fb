"""``agi-app sandbox ...``: build, start, stop and talk to the sandbox PBX.

agi-app sandbox provision
agi-app sandbox start [--profile run|test] [--demo-phones] [--write-config FILE]
                      [--hagi PORT[:PRIORITY[:WEIGHT]] ...]
agi-app sandbox stop [--profile run|test]
agi-app sandbox status [--profile run|test]
agi-app sandbox cli [--profile run|test] CMD...
agi-app sandbox config [--profile run|test] [--env]
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from agi_app.sandbox import dns
from agi_app.sandbox import provision as prov
from agi_app.sandbox.pbx import PBX, PROFILES, PBXError
from agi_app.sandbox.phones import PhoneError, Phones, answer, kill_phones

__all__ = ["main"]

#: operators the demo brings online for ``make run``
DEMO_OPERATORS = ("1000", "1001", "1002")
#: seconds a demo client talks before hanging up
DEMO_TALK = 15.0


def _err(text: str) -> None:
    print(f"agi-app sandbox: {text}", file=sys.stderr)


def _pbx(args: argparse.Namespace) -> PBX:
    return PBX(prov.root_dir(), PROFILES[args.profile])


def _provisioned() -> Path | None:
    """The tree, built when needed; ``None`` (the reason told) when this
    machine lacks what building it takes."""
    reason = prov.missing_prerequisites()
    if reason:
        _err(reason)
        return None
    return prov.provision()


def _provision(args: argparse.Namespace) -> int:
    root = _provisioned()
    if root is None:
        return 2
    print(f"sandbox: tree ready at {root}")
    return 0


def _start(args: argparse.Namespace) -> int:
    if _provisioned() is None:
        return 2
    pbx = _pbx(args)
    if args.hagi:
        pbx.srv = dns.SrvZone(dns.zone_name(pbx.name), tuple(args.hagi))
    if pbx.is_running():
        print(f"sandbox: the {pbx.name} instance is running: restarting it")
        kill_phones(pbx)
    pbx.start()
    if args.demo_phones:
        phones = Phones(pbx, detached=True)
        for number in DEMO_OPERATORS:
            phones.start(number, answer(after=1.0))
        # Demo clients hang up by themselves so a demo call always ends.
        phones.pstn.start(answer(after=2.0, hangup_after=DEMO_TALK))
        print(
            f"sandbox: operators {', '.join(DEMO_OPERATORS)} online (answer after 1 s); "
            f"the PSTN answers every number after 2 s and hangs up after {DEMO_TALK:g} s "
            f"(SIPp on 127.0.0.1:{pbx.profile.pstn_port})"
        )
    if args.write_config:
        path = Path(args.write_config)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(pbx.agi_app_ini())
        print(f"sandbox: agi_app settings for this PBX written to {path}")
    print(
        f"sandbox: {pbx.name} running: AMI 127.0.0.1:{pbx.ami_port} "
        f"(user {pbx.ami_username}), SIP 127.0.0.1:{pbx.sip_port}/udp, {_fastagi(pbx)}"
    )
    return 0


def _fastagi(pbx: PBX) -> str:
    """Where the instance's dialplan sends FastAGI sessions, in words."""
    if pbx.srv is None:
        return f"FastAGI expected on 127.0.0.1:{pbx.agi_port}"
    targets = ", ".join(
        f"127.0.0.1:{t.port} (priority {t.priority}, weight {t.weight})" for t in pbx.srv.targets
    )
    return f"FastAGI through {pbx.srv.url} (DNS {pbx.dns_address}:53): {targets}"


def _stop(args: argparse.Namespace) -> int:
    pbx = _pbx(args)
    kill_phones(pbx)
    was = pbx.is_running()
    pbx.stop()
    print(f"sandbox: {pbx.name} {'stopped' if was else 'was not running'}")
    return 0


def _status(args: argparse.Namespace) -> int:
    root = prov.root_dir()
    print(f"tree: {root} ({'ready' if prov.is_ready(root) else 'not built'})")
    if not prov.is_ready(root):
        return 3
    info = _pbx(args).status()
    for key, value in info.items():
        print(f"{key}: {value}")
    return 0 if info["running"] else 3


def _cli(args: argparse.Namespace) -> int:
    pbx = _pbx(args)
    if not pbx.is_running():
        _err(f"the {pbx.name} instance is not running")
        return 3
    print(pbx.cli(shlex.join(args.command) if len(args.command) > 1 else args.command[0]), end="")
    return 0


def _config(args: argparse.Namespace) -> int:
    pbx = _pbx(args)
    if args.env:
        for key, value in pbx.agi_app_config().items():
            print(f"{key}={shlex.quote(value)}")
    else:
        print(pbx.agi_app_ini(), end="")
    return 0


def _srv_target(text: str) -> dns.SrvTarget:
    try:
        return dns.parse_target(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main(argv: list[str]) -> int:
    """Run one ``agi-app sandbox`` command; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="agi-app sandbox",
        description="The sandbox Asterisk 22 PBX (Debian unstable chroot) and its SIPp phones.",
    )
    sub = parser.add_subparsers(dest="action", required=True)

    def command(name: str, func, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.set_defaults(func=func)
        if name != "provision":
            p.add_argument("--profile", choices=sorted(PROFILES), default="run")
        return p

    command("provision", _provision, "build (or check) the cached Asterisk tree")
    p = command("start", _start, "provision when needed, configure and boot the PBX")
    p.add_argument(
        "--demo-phones",
        action="store_true",
        help=f"register operators {', '.join(DEMO_OPERATORS)} as answering phones and "
        "make the PSTN answer every number",
    )
    p.add_argument("--write-config", metavar="FILE", help="write agi_app settings for this PBX")
    p.add_argument(
        "--hagi",
        action="append",
        type=_srv_target,
        metavar="PORT[:PRIORITY[:WEIGHT]]",
        help="FastAGI failover: AGI_APP_URL=hagi://fastagi.<instance>.test and a DNS server "
        "of the instance's own with an SRV record per --hagi (a FastAGI port on 127.0.0.1; "
        "priority 10, weight 0 by default)",
    )
    command("stop", _stop, "stop the PBX and its phones")
    command("status", _status, "is it running, on which ports")
    p = command("cli", _cli, "run an Asterisk CLI command")
    p.add_argument("command", nargs="+", help='e.g. "core show channels"')
    p = command("config", _config, "print agi_app settings (INI) for this PBX")
    p.add_argument("--env", action="store_true", help="as AGI_APP_* environment variables")

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (prov.ProvisionError, PBXError, PhoneError) as e:
        _err(str(e))
        return 1
