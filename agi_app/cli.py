"""Command line: ``agi-app serve|doctor|backup|demo|sandbox|install-sounds|widget-token``."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _serve(args: argparse.Namespace) -> int:
    from agi_app.app import run
    from agi_app.config import ConfigError, load

    try:
        config = load(args.config)
    except ConfigError as e:
        print(f"agi-app: configuration error: {e}", file=sys.stderr)
        return 2
    return run(config)


def _doctor(args: argparse.Namespace) -> int:

    from twisted.internet import defer, task
    from twisted.logger import LogLevel, globalLogBeginner

    from agi_app.doctor import diagnose
    from agi_app.logs import service_log_observer

    if args.verbose:
        globalLogBeginner.beginLoggingTo(
            [service_log_observer(sys.stderr, LogLevel.debug)], redirectStandardIO=False
        )

    async def check(reactor) -> None:
        checks = await diagnose(args.config, reactor, timeout=args.timeout)
        for c in checks:
            print(c.line(), flush=True)
        if not all(c.ok for c in checks):
            raise SystemExit(1)

    task.react(lambda reactor: defer.ensureDeferred(check(reactor)))
    return 0  # react() exits the process; not reached


def _backup(args: argparse.Namespace) -> int:
    from agi_app.config import ConfigError, load
    from agi_app.store import StoreError
    from agi_app.store.backup import backup

    try:
        config = load(args.config)
    except ConfigError as e:
        print(f"agi-app: configuration error: {e}", file=sys.stderr)
        return 2
    if config.store.url:
        # SQLite's online backup has no PostgreSQL counterpart here: the
        # database's own tools make a consistent copy of a live database.
        print("agi-app: backup copies the SQLite store only; the store is in PostgreSQL "
              "([store] url): back it up with pg_dump, e.g. pg_dump -Fc -f DEST DBNAME "
              "(docs/scaling.md)", file=sys.stderr)  # fmt: skip
        return 2
    try:
        done = backup(config.store.path, args.dest)
    except StoreError as e:
        print(f"agi-app: {e}", file=sys.stderr)
        return 1
    print(f"{done.path}: {done.size} bytes, schema version {done.schema_version}")
    return 0


def _demo() -> int:
    from agi_app.demo import main as demo_main

    return demo_main()


def _sandbox(args: argparse.Namespace) -> int:
    from agi_app.sandbox.cli import main as sandbox_main

    return sandbox_main(args.sandbox_args)


def _install_sounds(args: argparse.Namespace) -> int:
    from agi_app.sounds import SoundsError, install

    try:
        paths = install(args.target)
    except SoundsError as e:
        print(f"agi-app: {e}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


def _widget_token(args: argparse.Namespace) -> int:
    import json
    import time

    from agi_app.config import ConfigError, load
    from agi_app.validation import InvalidInput
    from agi_app.ws.tokens import issue

    try:
        config = load(args.config)
    except ConfigError as e:
        print(f"agi-app: configuration error: {e}", file=sys.stderr)
        return 2
    secret = config.websocket.token_secret
    if not secret:
        print("agi-app: [websocket] token_secret is not set: no token can be minted",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        client_id, expires = issue(secret, args.sip, args.ttl, time.time())
    except InvalidInput as e:
        print(f"agi-app: {e.message}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"client_id": client_id, "expires": expires}))
    else:
        print(client_id)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``agi-app`` console script."""
    parser = argparse.ArgumentParser(prog="agi-app", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the service")
    p.add_argument("--config", "-c", default=None, help="INI file (see agi_app.conf.example)")
    p.set_defaults(func=_serve)

    p = sub.add_parser(
        "doctor",
        help="check a deployment: AMI, manager.conf, dialplan, FastAGI, prompts, recordings",
        description="Check the deployment of the configuration FILE the way an admin would "
        "debug it: one line per check, ok or FAIL with what to fix; exit status 0 when "
        "every check passed, 1 otherwise (docs/operations.md).",
    )
    p.add_argument("--config", "-c", default=None, help="INI file (see agi_app.conf.example)")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds each step may take (default 10)")  # fmt: skip
    p.add_argument("--verbose", "-v", action="store_true", help="the log on standard error")
    p.set_defaults(func=_doctor)

    p = sub.add_parser(
        "backup",
        help="copy the SQLite store while the service runs",
        description="Copy [store] path of the configuration FILE to DEST: one consistent "
        "snapshot, taken while the service may go on writing (docs/operations.md).  SQLite "
        "only: a store in PostgreSQL is backed up with pg_dump (docs/scaling.md).",
    )
    p.add_argument("--config", "-c", default=None, help="INI file (see agi_app.conf.example)")
    p.add_argument("dest", help="the backup file to write (replaced when it exists)")
    p.set_defaults(func=_backup)

    p = sub.add_parser("demo", help="the service with the sandbox PBX and demo phones")
    p.set_defaults(func=lambda args: _demo())

    p = sub.add_parser("sandbox", help="the sandbox Asterisk PBX and SIPp phones", add_help=False)
    p.add_argument("sandbox_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_sandbox)

    p = sub.add_parser("install-sounds", help="copy the prompts into Asterisk's sounds folder")
    p.add_argument("target", help="ASTERISK_SOUNDS_DIR, e.g. /usr/share/asterisk/sounds")
    p.set_defaults(func=_install_sounds)

    from agi_app.ws.tokens import DEFAULT_TTL, MAX_TTL, MIN_TTL

    p = sub.add_parser(
        "widget-token",
        help="mint a widget token (the widget's client_id) for one extension",
        description="Print a widget token for extension SIP, valid TTL seconds, signed "
        "with [websocket] token_secret of the configuration.",
    )
    p.add_argument("--config", "-c", default=None, help="INI file (see agi_app.conf.example)")
    p.add_argument("--sip", required=True, help="the extension the widget acts as")
    p.add_argument("--ttl", type=int, default=DEFAULT_TTL,
                   help=f"seconds the token is valid ({MIN_TTL}..{MAX_TTL}, "
                        f"default {DEFAULT_TTL})")  # fmt: skip
    p.add_argument("--json", action="store_true", help='print {"client_id", "expires"}')
    p.set_defaults(func=_widget_token)

    args, unknown = parser.parse_known_args(argv)
    if args.command == "sandbox":
        # REMAINDER does not take a leading option: ``sandbox --help`` is
        # the sandbox parser's to answer, not this one's
        args.sandbox_args = unknown + args.sandbox_args
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args.func(args)
