"""``POST /api/widgetToken`` through a real twisted.web Site (in memory):
the token it answers is valid for the asked extension and time, it needs the
API key, and bad input is a 400 naming the field."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet.testing import MemoryReactorClock

from agi_app.web import Router, build_site, openapi
from agi_app.web.testing import MemoryHTTP
from agi_app.web.widget import WidgetTokenEndpoints
from agi_app.ws import tokens

SECRET = "0123456789abcdef-widget"
KEY = "crm-key"
T0 = 1_795_644_000


def _reactor():
    from twisted.internet import reactor

    return reactor


def _site(secret: str):
    clock = MemoryReactorClock()
    clock.advance(T0 + 0.25)
    router = Router()
    WidgetTokenEndpoints(secret, clock=clock).add_routes(router)
    return MemoryHTTP(build_site(router, api_keys=(KEY,), clock=_reactor()), _reactor())


async def _post(http, body, key=KEY, raw=None):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["X-API-Key"] = key
    data = raw if raw is not None else json.dumps(body).encode()
    response = await http.post("http://127.0.0.1/api/widgetToken", data=data, headers=headers)
    return response.code, json.loads(await response.content())


@pytest_twisted.ensureDeferred
async def test_a_token_for_the_extension_and_ttl():
    code, body = await _post(_site(SECRET), {"sip": "1000", "ttl": 120})
    assert code == 200 and body["expires"] == T0 + 120
    assert tokens.verify(SECRET, body["client_id"], T0 + 119) == "1000"
    with pytest.raises(tokens.TokenExpired):
        tokens.verify(SECRET, body["client_id"], T0 + 120)


@pytest_twisted.ensureDeferred
async def test_ttl_defaults_and_may_come_as_a_form_field():
    http = _site(SECRET)
    code, body = await _post(http, {"sip": "1001"})
    assert code == 200 and body["expires"] == T0 + tokens.DEFAULT_TTL
    response = await http.post(
        "http://127.0.0.1/api/widgetToken",
        data=b"sip=1001&ttl=600",
        headers={"Content-Type": "application/x-www-form-urlencoded", "X-API-Key": KEY},
    )
    assert json.loads(await response.content())["expires"] == T0 + 600


@pytest.mark.parametrize(
    "body, code",
    [
        ({}, "missing_sip"),
        ({"sip": ""}, "missing_sip"),
        ({"sip": "10.00"}, "invalid_sip"),
        ({"sip": "1000\r\nX: y"}, "invalid_sip"),
        ({"sip": ["1000"]}, "invalid_sip"),
        ({"sip": "1000", "ttl": 59}, "invalid_ttl"),
        ({"sip": "1000", "ttl": 86401}, "invalid_ttl"),
        ({"sip": "1000", "ttl": "1h"}, "invalid_ttl"),
        ({"sip": "1000", "ttl": -5}, "invalid_ttl"),
        ({"sip": "1000", "ttl": True}, "invalid_ttl"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_input_is_a_400_naming_the_field(body, code):
    status, answer = await _post(_site(SECRET), body)
    assert status == 400 and answer["error"]["code"] == code, answer
    assert answer["error"]["field"] == code.split("_", 1)[1]


@pytest_twisted.ensureDeferred
async def test_the_api_key_is_needed():
    status, answer = await _post(_site(SECRET), {"sip": "1000"}, key="wrong")
    assert status == 401 and "client_id" not in answer
    status, _ = await _post(_site(SECRET), {"sip": "1000"}, key=None)
    assert status == 401


@pytest_twisted.ensureDeferred
async def test_without_a_secret_tokens_are_disabled():
    status, answer = await _post(_site(""), {"sip": "1000"})
    assert status == 409 and answer["error"]["code"] == "widget_tokens_disabled"


def test_the_route_is_in_the_openapi_document():
    document = openapi.build_document([WidgetTokenEndpoints(SECRET, clock=None)])
    operation = document["paths"]["/api/widgetToken"]["post"]
    assert set(operation["responses"]) == {"200", "400", "401", "409"}
