"""Command line: ``agi-app serve|sandbox|install-sounds``."""

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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``agi-app`` console script."""
    parser = argparse.ArgumentParser(prog="agi-app", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the service")
    p.add_argument("--config", "-c", default=None, help="INI file (see agi_app.conf.example)")
    p.set_defaults(func=_serve)

    p = sub.add_parser("demo", help="the service with the sandbox PBX and demo phones")
    p.set_defaults(func=lambda args: _demo())

    p = sub.add_parser("sandbox", help="the sandbox Asterisk PBX and SIPp phones", add_help=False)
    p.add_argument("sandbox_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_sandbox)

    p = sub.add_parser("install-sounds", help="copy the prompts into Asterisk's sounds folder")
    p.add_argument("target", help="ASTERISK_SOUNDS_DIR, e.g. /usr/share/asterisk/sounds")
    p.set_defaults(func=_install_sounds)

    args, unknown = parser.parse_known_args(argv)
    if args.command == "sandbox":
        # REMAINDER does not take a leading option: ``sandbox --help`` is
        # the sandbox parser's to answer, not this one's
        args.sandbox_args = unknown + args.sandbox_args
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args.func(args)
