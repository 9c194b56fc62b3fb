"""Widget tokens: the format of CONTRACT section 8, checked against an HMAC
computed here independently; forged, tampered, malformed and expired tokens
are refused, and nothing else than a minted token is ever accepted."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agi_app.validation import InvalidInput
from agi_app.ws import tokens
from agi_app.ws.tokens import InvalidToken, TokenError, TokenExpired

SECRET = "correct horse battery staple"
NOW = 1_795_644_000


def reference(secret: str, sip: str, expires: int) -> str:
    """The contract's token, written out from its definition."""
    message = f"v1.{sip}.{expires}"
    digest = hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()
    return f"{message}.{digest}"


def test_mint_follows_the_contract():
    assert tokens.mint(SECRET, "1000", NOW + 60) == reference(SECRET, "1000", NOW + 60)


def test_a_token_minted_elsewhere_is_accepted_until_it_expires():
    token = reference(SECRET, "op_7-a", NOW + 60)
    assert tokens.verify(SECRET, token, NOW) == "op_7-a"
    assert tokens.verify(SECRET, token, NOW + 59.9) == "op_7-a"
    with pytest.raises(TokenExpired) as info:
        tokens.verify(SECRET, token, NOW + 60)
    assert info.value.reason == "token expired"


def test_upper_case_hex_is_the_same_signature():
    message, _, digest = reference(SECRET, "1000", NOW + 60).rpartition(".")
    assert tokens.verify(SECRET, f"{message}.{digest.upper()}", NOW) == "1000"


def test_issue_counts_the_ttl_from_now():
    token, expires = tokens.issue(SECRET, "1000", 3600, NOW + 0.7)
    assert expires == NOW + 3600
    assert token == reference(SECRET, "1000", expires)


@pytest.mark.parametrize(
    "sip, ttl, field",
    [
        ("", 3600, "sip"),
        (None, 3600, "sip"),
        ("10.00", 3600, "sip"),  # a dot would make the token ambiguous
        ("1000&1001", 3600, "sip"),
        ("x" * 33, 3600, "sip"),
        ("1000", 59, "ttl"),
        ("1000", 86401, "ttl"),
        ("1000", "3600", "ttl"),
        ("1000", True, "ttl"),
        ("1000", 3600.0, "ttl"),
    ],
)
def test_issue_checks_sip_and_ttl(sip, ttl, field):
    with pytest.raises(InvalidInput) as info:
        tokens.issue(SECRET, sip, ttl, NOW)
    assert info.value.field == field


def _tamper(token: str) -> list[str]:
    message, _, digest = token.rpartition(".")
    flipped = digest[:-1] + ("0" if digest[-1] != "0" else "1")
    _v1, sip, expires = message.split(".")
    return [
        f"{message}.{flipped}",  # one hex digit changed
        f"v1.1001.{expires}.{digest}",  # another extension, the same signature
        f"v1.{sip}.{int(expires) + 86400}.{digest}",  # a longer life
        f"v2.{sip}.{expires}.{digest}",
        reference("another secret of sixteen", sip, int(expires)),
        token + "0",
        token[:-1],
        token + "\n",
        " " + token,
        f"v1.{sip}.+{expires}.{digest}",
        f"v1.{sip}.{expires}",
        "v1.",
        "v1...",
    ]


@pytest.mark.parametrize("forged", _tamper(reference(SECRET, "1000", NOW + 600)))
def test_forged_or_tampered_tokens_are_invalid(forged):
    with pytest.raises(InvalidToken) as info:
        tokens.verify(SECRET, forged, NOW)
    assert info.value.reason == "invalid token"


def test_an_expired_forgery_is_invalid_not_expired():
    """Expiry is told only of a genuine token: a forgery learns nothing."""
    forged = reference("not the secret at all", "1000", NOW - 10)
    with pytest.raises(InvalidToken):
        tokens.verify(SECRET, forged, NOW)


@given(st.one_of(st.text(max_size=200), st.binary(max_size=100).map(lambda b: b.hex())))
def test_nothing_but_a_minted_token_is_accepted(value):
    try:
        tokens.verify(SECRET, "v1." + value, NOW)
    except TokenError:
        return
    # Only a string holding the right signature can get here.
    sip, expires = value.split(".")[:2]
    assert "v1." + value == reference(SECRET, sip, int(expires))


@given(st.from_regex(r"\Av1\.[A-Za-z0-9_-]{1,32}\.[0-9]{1,12}\.[0-9a-f]{64}\Z"))
def test_well_formed_guesses_are_refused(guess):
    with pytest.raises(InvalidToken):
        tokens.verify(SECRET, guess, NOW)


def test_looks_like_token():
    assert tokens.looks_like_token("v1.anything")
    assert not tokens.looks_like_token("password")
    assert not tokens.looks_like_token(None)
    assert not tokens.looks_like_token(["v1."])


# -- agi-app widget-token -------------------------------------------------------


def _cli(tmp_path, capsys, *args, secret=SECRET):
    import json as _json

    from agi_app.cli import main

    config = tmp_path / "agi_app.conf"
    config.write_text(f"[websocket]\ntoken_secret = {secret}\n" if secret else "")
    code = main(["widget-token", "--config", str(config), *args])
    out, err = capsys.readouterr()
    try:
        parsed = _json.loads(out) if out.startswith("{") else out.strip()
    except ValueError:
        parsed = out
    return code, parsed, err


def test_the_cli_prints_a_token_for_the_extension(tmp_path, capsys):
    import time

    before = int(time.time())
    code, token, err = _cli(tmp_path, capsys, "--sip", "1000", "--ttl", "120")
    assert code == 0 and err == ""
    assert tokens.verify(SECRET, token, before + 119) == "1000"
    with pytest.raises(TokenExpired):
        tokens.verify(SECRET, token, int(time.time()) + 121)
    code, answer, _ = _cli(tmp_path, capsys, "--sip", "1001", "--json")
    assert code == 0 and tokens.verify(SECRET, answer["client_id"], before) == "1001"
    assert before + tokens.DEFAULT_TTL <= answer["expires"] <= int(time.time()) + 3600


@pytest.mark.parametrize(
    "args, secret, message",
    [
        (("--sip", "10.00"), SECRET, "sip must be"),
        (("--sip", "1000", "--ttl", "30"), SECRET, "ttl must be between 60 and 86400"),
        (("--sip", "1000"), "", "[websocket] token_secret is not set"),
        (("--sip", "1000"), "short", "configuration error: [websocket] token_secret"),
    ],
)
def test_the_cli_refuses_with_a_reason(tmp_path, capsys, args, secret, message):
    code, out, err = _cli(tmp_path, capsys, *args, secret=secret)
    assert code == 2 and out == "" and message in err
