"""The static widget passwords (``[websocket] client_ids``, default
``password``) sit in every CRM page's JavaScript: they are accepted only
while the WebSocket listens on loopback.  On any other address the
configuration is refused naming the key, and ``agi-app serve`` does not
start (it exits before listening on anything)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agi_app.config import ConfigError, is_loopback_endpoint, load

SECRET = "0123456789abcdef-widget"
ROOT = Path(__file__).resolve().parents[2]

PUBLIC = [
    "tcp:10150",  # no interface: every address
    "tcp:10150:interface=0.0.0.0",
    "tcp:port=10150:interface=192.0.2.7",
    "tcp:10150:0.0.0.0",  # the interface as a positional argument
    "tcp6:10150",  # every IPv6 address
    r"tcp6:10150:interface=\:\:",
    "tcp:10150:interface=127.0.0.1.nip.io",
    "ssl:10150:privateKey=key.pem",
]
LOOPBACK = [
    "tcp:10150:interface=127.0.0.1",
    "tcp:10150:127.0.0.1",
    "tcp:interface=127.0.0.2:port=10150",
    r"tcp6:10150:interface=\:\:1",
    "ssl:10150:privateKey=key.pem:interface=localhost",
    "unix:/run/agi_app/ws.sock",
]


def ws(listen: str, **more: str) -> dict[str, str]:
    env = {"AGI_APP_WEBSOCKET_LISTEN": listen}
    env.update({f"AGI_APP_WEBSOCKET_{k.upper()}": v for k, v in more.items()})
    return env


@pytest.mark.parametrize("listen", PUBLIC)
def test_the_default_password_off_loopback_is_refused_naming_the_key(listen):
    with pytest.raises(ConfigError) as info:
        load(None, environ=ws(listen))
    message = str(info.value)
    assert message.startswith("[websocket] client_ids:") and repr(listen) in message
    assert "'password'" in message, "says it is the default password"


@pytest.mark.parametrize("listen", PUBLIC)
def test_any_static_client_id_off_loopback_is_refused_even_with_tokens(listen):
    with pytest.raises(ConfigError, match=r"^\[websocket\] client_ids:"):
        load(None, environ=ws(listen, client_ids="a-long-random-looking-id", token_secret=SECRET))


@pytest.mark.parametrize("listen", PUBLIC)
def test_off_loopback_tokens_only_is_accepted(listen):
    config = load(None, environ=ws(listen, client_ids="", token_secret=SECRET))
    assert config.websocket.client_ids == () and config.websocket.token_secret == SECRET


@pytest.mark.parametrize("listen", LOOPBACK)
def test_on_loopback_the_static_ids_keep_working(listen):
    assert is_loopback_endpoint(listen)
    assert load(None, environ=ws(listen)).websocket.client_ids == ("password",)


@pytest.mark.parametrize(
    "env, key",
    [
        ({"client_ids": ""}, r"\[websocket\] client_ids"),  # nothing could connect
        ({"token_secret": "short"}, r"\[websocket\] token_secret"),
        ({"allowed_origins": "crm.example.com"}, r"\[websocket\] allowed_origins"),
        ({"allowed_origins": "https://crm.example.com/page"}, r"\[websocket\] allowed_origins"),
        ({"allowed_origins": "ftp://crm.example.com"}, r"\[websocket\] allowed_origins"),
    ],
)
def test_other_bad_websocket_values_name_the_key(env, key):
    with pytest.raises(ConfigError, match=key):
        load(None, environ=ws("tcp:10150:interface=127.0.0.1", **env))


def test_agi_app_serve_refuses_to_start(tmp_path):
    config = tmp_path / "agi_app.conf"
    config.write_text(
        "[websocket]\nlisten = tcp:0:interface=0.0.0.0\n"
        f"[store]\npath = {tmp_path / 'store.sqlite3'}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGI_APP_")}
    done = subprocess.run(
        [sys.executable, "-m", "agi_app", "serve", "--config", str(config)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done
    assert "configuration error: [websocket] client_ids" in done.stderr
    assert not (tmp_path / "store.sqlite3").exists(), "nothing started"
