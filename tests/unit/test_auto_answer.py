"""Auto-answer of the operator leg: the SIP headers configured in
``[dialing] auto_answer_headers`` reach the PBX as ``PJSIP_HEADER(add,Name)``
assignments of the Originate (the real AMI bytes of the fake PBX), only when
asked for, and never change what makes two requests the same."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from urllib.parse import urlencode

import pytest
import pytest_twisted
from test_calls_service import Harness, request
from test_web_calls import MAKE_CALL, Stack

from agi_app.ami.message import variable_assignment
from agi_app.ami.testing import OriginateOutcome
from agi_app.calls.service import CallRequest, CallService
from agi_app.config import ConfigError, DialingConfig, load, sip_headers
from agi_app.errors import Conflict
from agi_app.store import ExternalKeyConflict

HEADERS = (("Call-Info", "<sip:127.0.0.1>;answer-after=0"),
           ("Alert-Info", "info=alert-autoanswer"))  # fmt: skip
ASSIGNMENTS = [
    "PJSIP_HEADER(add,Call-Info)=<sip:127.0.0.1>;answer-after=0",
    "PJSIP_HEADER(add,Alert-Info)=info=alert-autoanswer",
]


class AutoHarness(Harness):
    """The CallService harness with the auto-answer headers configured and
    ``default`` as ``[dialing] operator_auto_answer``."""

    default = False
    headers = HEADERS

    def _build(self) -> None:
        self.dialing = dataclasses.replace(self.dialing, operator_auto_answer=self.default)
        super()._build()
        self.calls = CallService(lifecycle=self.lifecycle, dialing=self.dialing,
                                 auto_answer_headers=self.headers)  # fmt: skip

    def header_assignments(self) -> list[str]:
        """The PJSIP_HEADER assignments of the last Originate."""
        originate = self.pbx.actions_named("Originate")[-1]
        return [v for v in originate.getall("Variable") if v.startswith("PJSIP_HEADER")]


def harness(tmp_path: Path, **attrs) -> AutoHarness:
    cls = type("H", (AutoHarness,), attrs)
    return cls(tmp_path)


@pytest.fixture
def make(tmp_path: Path):
    """Build a harness with class attributes changed; closed after the test."""
    made: list[AutoHarness] = []

    def build(**attrs) -> AutoHarness:
        made.append(harness(tmp_path / str(len(made)), **attrs))
        return made[-1]

    yield build
    for one in made:
        one.close()


@pytest.fixture
def h(make):
    return make()


@pytest_twisted.ensureDeferred
async def test_the_headers_go_with_the_originate_only_when_asked(h):
    await h.connect()
    h.pbx.default_outcome = OriginateOutcome(delay=None)
    await h.place()
    assert h.header_assignments() == []
    await h.place(auto_answer=False)
    assert h.header_assignments() == []
    await h.place(auto_answer=True)
    assert h.header_assignments() == ASSIGNMENTS
    # the other variables are untouched
    originate = h.pbx.actions_named("Originate")[-1]
    assert originate["Channel"] == "PJSIP/1000"
    assert originate.getall("Variable")[0].startswith("__AGI_APP_CALL_ID=")


@pytest_twisted.ensureDeferred
async def test_the_configured_default_applies_unless_the_request_says_otherwise(make):
    h = make(default=True)
    await h.connect()
    h.pbx.default_outcome = OriginateOutcome(delay=None)
    await h.place()
    assert h.header_assignments() == ASSIGNMENTS
    await h.place(auto_answer=False)
    assert h.header_assignments() == []


@pytest_twisted.ensureDeferred
async def test_a_number_or_a_group_is_never_auto_answered(h):
    await h.connect()
    h.pbx.default_outcome = OriginateOutcome(delay=None)
    await h.place(kind="phoneToPhone", first="380631110000", first_is_phone=True,
                  auto_answer=True)  # fmt: skip
    assert h.header_assignments() == []
    await h.place(kind="callback", group=("1000", "1001"), auto_answer=True)
    originate = h.pbx.actions_named("Originate")[-1]
    assert originate["Channel"].startswith("Local/")
    assert h.header_assignments() == []


@pytest_twisted.ensureDeferred
async def test_asking_without_headers_configured_is_a_conflict_and_places_nothing(make):
    h = make(headers=())
    await h.connect()
    with pytest.raises(Conflict) as caught:
        await h.calls.place(request(auto_answer=True, external_key="k-aa"))
    assert caught.value.code == "auto_answer_unavailable"
    assert h.store.all_calls() == []
    assert h.pbx.actions_named("Originate") == []
    # not asking still works
    await h.place()
    assert h.header_assignments() == []


@pytest_twisted.ensureDeferred
async def test_a_request_stored_before_auto_answer_existed_is_still_the_same(h):
    await h.connect()
    h.pbx.default_outcome = OriginateOutcome(delay=None)
    old = dataclasses.asdict(request(external_key="k-old"))
    del old["auto_answer"]  # what the store holds of a call made before
    row, created = await h.store.create_call(
        call_id="old-1", kind="makeCall", sip="1000", phone="380639920000",
        order_id="order-15", external_key="k-old", params=old,
    )  # fmt: skip
    assert created
    call_id, created = await h.calls.place(request(external_key="k-old"))
    assert (call_id, created) == ("old-1", False)
    # asking for auto-answer is another request
    with pytest.raises(ExternalKeyConflict):
        await h.calls.place(request(external_key="k-old", auto_answer=True))


def test_params_keep_auto_answer_only_when_set_and_come_back_the_same():
    assert "auto_answer" not in request().params()
    for value in (True, False):
        params = request(auto_answer=value).params()
        assert params["auto_answer"] is value
        assert CallRequest(**json.loads(json.dumps(params))) == request(auto_answer=value)


# -- configuration --------------------------------------------------------------


def test_the_default_headers_name_the_pbx():
    cfg = load(None, environ={"AGI_APP_AMI_HOST": "10.0.0.5"})
    assert cfg.dialing.operator_auto_answer is False
    assert cfg.dialing.auto_answer(cfg.ami.host) == (
        ("Call-Info", "<sip:10.0.0.5>;answer-after=0"),
        ("Alert-Info", "info=alert-autoanswer"),
    )


def test_a_header_set_of_ones_own():
    cfg = load(None, environ={
        "AGI_APP_DIALING_OPERATOR_AUTO_ANSWER": "yes",
        "AGI_APP_DIALING_AUTO_ANSWER_HEADERS":
            "X-Auto-Answer: yes, Call-Info: {pbx};answer-after=1",
    })  # fmt: skip
    assert cfg.dialing.operator_auto_answer is True
    assert cfg.dialing.auto_answer("pbx.local") == (
        ("X-Auto-Answer", "yes"), ("Call-Info", "pbx.local;answer-after=1"))


@pytest.mark.parametrize(
    "headers, says",
    [
        ("Call-Info <sip:x>", "write a header as Name: value"),
        ("Call Info: x", "write a header as Name: value"),
        ("X(1): y", "write a header as Name: value"),
        ("Via: SIP/2.0/UDP 1.2.3.4", "belongs to the SIP dialog"),
        ("CSeq: 1 INVITE", "belongs to the SIP dialog"),
        ("v: x", "write a header as Name: value"),  # a compact form
        ("X-A: {host}", "the only placeholder is {pbx}"),
        ("X-A: {0}", "the only placeholder is {pbx}"),
        ("X-A: {pbx", "the only placeholder is {pbx}"),
        ('Alert-Info: "ring"', "without commas, quotes or backslashes"),
        ("Alert-Info: a\\b", "without commas, quotes or backslashes"),
        ("Alert-Info: сигнал", "printable ASCII"),
        ("Alert-Info:", "printable ASCII"),
        ("X-A: 1, X-A: 2", "X-A is given twice"),
        (", ".join(f"X-{i}: 1" for i in range(9)), "at most 8 headers"),
    ],
)
def test_a_header_that_breaks_a_rule_is_refused_at_load(headers, says):
    with pytest.raises(ConfigError) as caught:
        load(None, environ={"AGI_APP_DIALING_AUTO_ANSWER_HEADERS": headers})
    assert str(caught.value).startswith("[dialing] auto_answer_headers: ")
    assert says in str(caught.value)


def test_control_characters_never_reach_a_header():
    with pytest.raises(ConfigError) as caught:
        load(None, environ={"AGI_APP_DIALING_AUTO_ANSWER_HEADERS": "X-A: a\r\nVia: x"})
    assert "control characters" in str(caught.value)
    # the pure check refuses them too, whatever path a value comes by
    with pytest.raises(ValueError):
        sip_headers(("X-A: a\nb",), pbx="p")
    with pytest.raises(ValueError):
        sip_headers(("X-A: {pbx}",), pbx="a\r\nVia: x")


def test_every_accepted_header_is_a_safe_originate_variable():
    for name, value in sip_headers(
        ("Call-Info: <sip:{pbx}>;answer-after=0", "Alert-Info: <http://x/r.wav>;info=alert-autoanswer",
         "X-Some-Header-9: a=b;c=d <e> [f] (g)"),
        pbx="127.0.0.1",
    ):  # fmt: skip
        assert variable_assignment(f"PJSIP_HEADER(add,{name})", value)


@pytest.mark.parametrize(
    "environ, says",
    [
        ({"AGI_APP_DIALING_OPERATOR_AUTO_ANSWER": "yes",
          "AGI_APP_DIALING_OPERATOR_CHANNEL": "SIP/{sip}"}, "needs a PJSIP operator_channel"),
        ({"AGI_APP_DIALING_OPERATOR_AUTO_ANSWER": "yes",
          "AGI_APP_DIALING_AUTO_ANSWER_HEADERS": ""}, "auto_answer_headers is empty"),
    ],
)  # fmt: skip
def test_auto_answer_by_default_needs_headers_and_pjsip(environ, says):
    with pytest.raises(ConfigError) as caught:
        load(None, environ=environ)
    assert str(caught.value).startswith("[dialing] operator_auto_answer: ")
    assert says in str(caught.value)


def test_a_non_pjsip_operator_channel_cannot_auto_answer(h):
    dialing = DialingConfig(operator_channel="SIP/{sip}")
    calls = CallService(lifecycle=h.lifecycle, dialing=dialing, auto_answer_headers=HEADERS)
    assert not calls.can_auto_answer
    assert not calls.auto_answers(request(auto_answer=True))
    assert h.calls.auto_answers(request(auto_answer=True))


# -- the API ------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, name, extra",
    [
        ("/api/makeCall.json", "auto_answer", MAKE_CALL),
        ("/api/calls/extToPhone", "autoAnswer",
         {"ext_number": "1000", "phone_number": "380639920000", "async": True}),
    ],
)  # fmt: skip
@pytest_twisted.ensureDeferred
async def test_the_api_hands_auto_answer_over(path, name, extra):
    stack = Stack()
    for sent, got in (("1", True), ("0", False), ("true", True), (None, None)):
        body = dict(extra) if sent is None else {**extra, name: sent}
        code, answer = await stack.post(path, body)
        assert code == 200, answer
        assert stack.calls.placed[-1].auto_answer is got
    code, answer = await stack.post(path, {**extra, name: "maybe"})
    assert (code, answer["error"]["field"]) == (400, name)


@pytest_twisted.ensureDeferred
async def test_make_call_takes_auto_answer_in_the_query():
    stack = Stack()
    response = await stack.http.get(
        f"http://127.0.0.1/api/makeCall.json?{urlencode({**MAKE_CALL, 'auto_answer': 1})}"
    )
    assert response.code == 200
    assert stack.calls.placed[-1].auto_answer is True
