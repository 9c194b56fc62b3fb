"""``agi-app demo`` (what ``make run`` starts when no ``agi_app.conf`` exists):
the sandbox PBX with demo phones, and the service configured for it.

Operators 1000-1002 answer after a second; every outside number answers
after two seconds and hangs up after a while.  Ctrl-C or SIGTERM stops the
service, then the sandbox PBX and its phones.
"""

from __future__ import annotations

import dataclasses
import secrets
import sys
from pathlib import Path

from agi_app.config import ConfigError, StoreConfig, load

__all__ = ["main"]

SANDBOX_INI = Path("var/sandbox.ini")


def _banner(url: str, widget: str) -> str:
    return "\n".join(
        [
            "",
            f"agi_app demo: HTTP API on {url} (open: it listens on loopback only)",
            "  try:",
            f"    curl '{url}/api/makeCall.json?sip=1000&phone=380639920000"
            "&order_id=15&external_key=demo-1'",
            f"    curl '{url}/api/orderHistory.json?order_id=15'",
            f"    curl '{url}/api/sipList.json'",
            f"    curl '{url}/health'",
            "  the browser widget of extension 1000 (the page asks the server for its token):",
            f"    {widget}",
            "  Ctrl-C stops the service, the sandbox PBX and the demo phones.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """Start the sandbox with demo phones, serve until stopped, then stop it."""
    from agi_app.app import run
    from agi_app.sandbox.cli import main as sandbox

    code = sandbox(
        ["start", "--profile", "run", "--demo-phones", "--write-config", str(SANDBOX_INI)]
    )
    if code:
        return code
    try:
        try:
            config = load(SANDBOX_INI)
        except ConfigError as e:
            print(f"agi-app demo: configuration error: {e}", file=sys.stderr)
            return 2
        config = dataclasses.replace(config, store=StoreConfig(path="var/agi_app.sqlite3"))
        if not config.websocket.token_secret:
            # Widget tokens for the demo page; a new secret each run.
            websocket = dataclasses.replace(config.websocket, token_secret=secrets.token_hex(32))
            config = dataclasses.replace(config, websocket=websocket)
        url = config.http.public_url.rstrip("/")
        print(_banner(url, f"{url}/static/demo.html?phone=1000&connect=1"), flush=True)
        return run(config)
    finally:
        sandbox(["stop", "--profile", "run"])
