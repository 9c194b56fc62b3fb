"""AMI messages: parsing (framing, repeated headers, splits, encodings) and the
action encoder's refusals."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agi_app.ami import AMIInjectionError, AMIMessage, AMIParser, AMIProtocolError, encode_action
from agi_app.ami.message import MAX_INCOMING_LINE, variable_assignment

GREETING = b"Asterisk Call Manager/11.0.0\r\n"

NEWCHANNEL = (
    b"Event: Newchannel\r\n"
    b"Privilege: call,all\r\n"
    b"Channel: PJSIP/101-00000001\r\n"
    b"ChannelState: 0\r\n"
    b"CallerIDNum: 101\r\n"
    b"CallerIDName: \xd0\x9e\xd0\xbf\xd0\xb5\xd1\x80\xd0\xb0\xd1\x82\xd0\xbe\xd1\x80\r\n"
    b"AccountCode: \r\n"
    b"Uniqueid: 1764105600.1\r\n"
    b"ChanVariable: AGI_APP_CALL_ID=c-17\r\n"
    b"ChanVariable: OTHER=a=b\r\n"
    b"\r\n"
)


def parse_all(data: bytes, greeting: bool = True) -> list:
    return AMIParser(expect_greeting=greeting).feed(data)


def test_greeting_then_message():
    items = parse_all(GREETING + NEWCHANNEL)
    assert items[0] == "Asterisk Call Manager/11.0.0"
    msg = items[1]
    assert isinstance(msg, AMIMessage)
    assert msg["Event"] == "Newchannel"
    assert msg.is_event and not msg.is_response
    assert msg["CallerIDName"] == "Оператор"


def test_empty_values_and_repeated_headers_in_order():
    msg = parse_all(NEWCHANNEL, greeting=False)[0]
    assert msg["AccountCode"] == ""
    assert msg.getall("ChanVariable") == ["AGI_APP_CALL_ID=c-17", "OTHER=a=b"]
    assert msg["ChanVariable"] == "AGI_APP_CALL_ID=c-17"
    assert msg.variables == {"AGI_APP_CALL_ID": "c-17", "OTHER": "a=b"}
    assert msg.raw[0] == ("Event", "Newchannel")
    assert [k for k, _ in msg.raw].count("ChanVariable") == 2
    assert msg.getall("Nothing") == []


def test_keys_are_case_insensitive():
    msg = parse_all(NEWCHANNEL, greeting=False)[0]
    assert msg["uniqueid"] == msg["UNIQUEID"] == "1764105600.1"
    assert "channel" in msg and "Channel" in msg
    assert msg.get("missing") is None
    with pytest.raises(KeyError):
        msg["missing"]
    # iteration yields each key once, as first spelled
    assert list(msg).count("ChanVariable") == 1
    assert len(msg) == len(set(k.lower() for k, _ in msg.raw))


def test_bare_lf_line_endings():
    data = NEWCHANNEL.replace(b"\r\n", b"\n")
    assert parse_all(data, greeting=False)[0] == parse_all(NEWCHANNEL, greeting=False)[0]


def test_value_keeps_colons_and_bare_colon_is_empty_value():
    msg = parse_all(b"Response: Success\r\nData: a:b: c\r\nEmpty:\r\n\r\n", greeting=False)[0]
    assert msg["Data"] == "a:b: c"
    assert msg["Empty"] == ""
    assert msg.is_response


def test_originate_response_is_an_event_although_it_has_response():
    msg = parse_all(b"Event: OriginateResponse\r\nResponse: Failure\r\nReason: 5\r\n\r\n",
                    greeting=False)[0]
    assert msg.is_event and not msg.is_response
    assert msg.event == "OriginateResponse"
    assert msg.response == "Failure"


def test_blank_lines_between_messages_are_ignored():
    items = parse_all(b"\r\n\r\nEvent: A\r\n\r\n\r\n\r\nEvent: B\r\n\r\n", greeting=False)
    assert [m["Event"] for m in items] == ["A", "B"]


def test_incomplete_message_is_held_back():
    parser = AMIParser(expect_greeting=False)
    assert parser.feed(b"Event: A\r\nX: 1\r\n") == []
    assert parser.feed(b"\r\n")[0]["X"] == "1"


@given(st.lists(st.integers(min_value=0, max_value=len(GREETING + NEWCHANNEL * 2)),
                max_size=12))
def test_any_split_gives_the_same_messages(cuts):
    data = GREETING + NEWCHANNEL + NEWCHANNEL.replace(b"\r\n", b"\n")
    expected = parse_all(data)
    parser = AMIParser()
    got = []
    bounds = sorted(set(cuts)) + [len(data)]
    start = 0
    for end in bounds:
        got += parser.feed(data[start:end])
        start = end
    assert got == expected


def test_utf8_character_split_across_packets():
    parser = AMIParser(expect_greeting=False)
    data = "Event: X\r\nCallerIDName: Петро\r\n\r\n".encode()
    cut = data.index("е".encode()) + 1  # in the middle of a two-byte character
    assert parser.feed(data[:cut]) == []
    msg = parser.feed(data[cut:])[0]
    assert msg["CallerIDName"] == "Петро"
    assert "\ufffd" not in msg["CallerIDName"]


def test_invalid_utf8_is_replaced_not_fatal():
    # Asterisk passes a latin-1 caller name through unchanged.
    data = b"Event: Newchannel\r\nCallerIDName: Jos\xe9 M\xfcller\r\nUniqueid: 1.1\r\n\r\n"
    msg = parse_all(data, greeting=False)[0]
    assert msg["CallerIDName"] == "Jos\ufffd M\ufffdller"
    assert msg["Uniqueid"] == "1.1"


def test_line_without_colon_is_skipped():
    parser = AMIParser(expect_greeting=False)
    msg = parser.feed(b"Response: Success\r\nsome junk\r\nA: 1\r\n\r\n")[0]
    assert msg.raw == [("Response", "Success"), ("A", "1")]
    assert parser.stray_lines == 1


def test_endless_line_is_a_protocol_error():
    parser = AMIParser(expect_greeting=False)
    parser.feed(b"Event: X\r\nData: " + b"x" * 1000)
    with pytest.raises(AMIProtocolError):
        parser.feed(b"x" * MAX_INCOMING_LINE)


def test_message_equality_and_secret_redaction():
    a = AMIMessage([("Action", "Login"), ("Secret", "hunter2")])
    assert a == AMIMessage([("Action", "Login"), ("Secret", "hunter2")])
    assert a == {"Action": "Login", "Secret": "hunter2"}
    assert a != AMIMessage([("Action", "Login")])
    assert "hunter2" not in repr(a)
    assert AMIMessage.of(Event="X")["event"] == "X"


# -- encoding ------------------------------------------------------------------


def test_encode_action_exact_bytes():
    data = encode_action("Originate", "abc-1", [
        ("Channel", "PJSIP/101"), ("Timeout", 30000), ("Async", True), ("Account", None),
        ("Variable", "A=1"), ("Variable", "B=2"), ("CallerID", ""),
    ])
    assert data == (
        b"Action: Originate\r\nActionID: abc-1\r\nChannel: PJSIP/101\r\nTimeout: 30000\r\n"
        b"Async: true\r\nVariable: A=1\r\nVariable: B=2\r\nCallerID: \r\n\r\n"
    )


def test_encode_action_utf8():
    data = encode_action("Originate", "a-1", [("CallerID", '"Иван" <101>')])
    assert '"Иван" <101>'.encode() in data


@pytest.mark.parametrize("value", [
    "ok\r\nAction: Originate", "ok\nAction: Originate", "ok\rx", "ok\x00x",
    "PJSIP/101\r\n\r\nAction: Originate\r\nChannel: PJSIP/999",
])
def test_encode_refuses_line_breaks_in_values(value):
    with pytest.raises(AMIInjectionError):
        encode_action("Setvar", "a-1", [("Value", value)])


@pytest.mark.parametrize("name", [
    "Bad Name", "Bad:Name", "Bad\r\nName", "", "Name\x00", "Variable\nAction", "Ünïcode",
])
def test_encode_refuses_bad_header_names(name):
    with pytest.raises(AMIInjectionError):
        encode_action("Setvar", "a-1", [(name, "x")])


@pytest.mark.parametrize("action", ["Ping\r\nAction: Originate", "Ping Pong", "", "Ping:"])
def test_encode_refuses_bad_action_names(action):
    with pytest.raises(AMIInjectionError):
        encode_action(action, "a-1", [])


def test_encode_refuses_action_and_actionid_headers():
    with pytest.raises(ValueError):
        encode_action("Ping", "a-1", [("ActionID", "other")])
    with pytest.raises(ValueError):
        encode_action("Ping", "a-1", [("action", "Originate")])


def test_encode_refuses_what_asterisk_would_silently_drop():
    with pytest.raises(ValueError, match="longer"):
        encode_action("Setvar", "a-1", [("Value", "x" * 1100)])
    with pytest.raises(ValueError, match="headers"):
        encode_action("UserEvent", "a-1", [(f"H{i}", "x") for i in range(130)])


def test_encode_refuses_non_text_values():
    with pytest.raises(TypeError):
        encode_action("Ping", "a-1", [("X", object())])


@pytest.mark.parametrize("value", ["a,b", 'say "hi"', "back\\slash", "a\r\nb", "a\nb", "a\x00"])
def test_variable_values_that_asterisk_would_split_or_mangle(value):
    with pytest.raises(AMIInjectionError):
        variable_assignment("X", value)


@pytest.mark.parametrize(
    "name",
    ["", "A=B", "A,B", "A B", "A\nB", "a(b", "X)", "F(a,)", "F(a,b)=c", "A,B(c)", "F(a,b c)"],
)
def test_variable_names(name):
    with pytest.raises(AMIInjectionError):
        variable_assignment(name, "1")


def test_variable_assignment_ok():
    assert variable_assignment("__AGI_APP_CALL_ID", "c-17") == "__AGI_APP_CALL_ID=c-17"
    assert variable_assignment("CHANNEL(language)", "ru") == "CHANNEL(language)=ru"
    assert variable_assignment("EMPTY", "") == "EMPTY="
    # a function of several arguments: Asterisk keeps the comma inside parentheses
    assert (variable_assignment("PJSIP_HEADER(add,Call-Info)", "<sip:pbx>;answer-after=0")
            == "PJSIP_HEADER(add,Call-Info)=<sip:pbx>;answer-after=0")  # fmt: skip


# -- the parser's fast paths against plain reference code -----------------------


def reference_parse(data: bytes, events: set[str] | None) -> list[list[tuple[str, str]]]:
    """The headers of every message, line by line the plain way; events whose
    name is not in ``events`` (and that carry no ActionID) left out."""
    out = []
    headers: list[tuple[str, str]] = []
    for line in data.decode("utf-8", errors="replace").split("\n"):
        if line.endswith("\r"):
            line = line[:-1]
        if not line:
            if headers:
                keys = {k.lower(): v for k, v in reversed(headers)}
                name = keys.get("event")
                if (
                    events is None
                    or name is None
                    or "actionid" in keys
                    or name.strip().lower() in events
                ):
                    out.append(headers)
                headers = []
            continue
        key, sep, value = line.partition(":")
        if sep:
            headers.append((key.strip(), value.lstrip(" \t")))
    return out


_KEYS = st.sampled_from(
    ["Event", "event", "Uniqueid", "UNIQUEID", "ChanVariable", "chanvariable", "ActionID",
     "Response", " Spaced ", "Key\t", "A-b_c", "Caller:Name"]
)  # fmt: skip
_VALUES = st.text(
    alphabet=st.sampled_from(list("ab:= \tÉİйx1")), max_size=8
).filter(lambda v: "\n" not in v and "\r" not in v)
_LINE = st.one_of(
    st.tuples(_KEYS, st.sampled_from([":", ": ", ":  ", ":\t"]), _VALUES).map("".join),
    st.sampled_from(["junk", "Event: Newstate", "Event: VarSet", "event: newstate"]),
)
_MESSAGE = st.lists(_LINE, min_size=1, max_size=6)


@given(
    st.lists(_MESSAGE, max_size=6),
    st.sampled_from(["\r\n", "\n"]),
    st.booleans(),
    st.lists(st.integers(min_value=0, max_value=400), max_size=6),
)
def test_parser_agrees_with_the_plain_reference(messages, eol, filtered, cuts):
    data = "".join(eol.join(m) + eol + eol for m in messages).encode()
    events = {"newstate", "hangup"} if filtered else None
    parser = AMIParser(expect_greeting=False, events=events)
    got: list = []
    start = 0
    for end in sorted(set(min(c, len(data)) for c in cuts)) + [len(data)]:
        got += parser.feed(data[start:end])
        start = end
    expected = reference_parse(data, events)
    assert [m.raw for m in got] == expected
    for msg, headers in zip(got, expected, strict=True):
        for key in ("Event", "uniqueid", "ChanVariable", "Missing", "Spaced", "Key", "Caller"):
            values = [v for k, v in headers if k.lower() == key.lower()]
            assert msg.get(key) == (values[0] if values else None)
            assert msg.getall(key) == values
            assert (key in msg) == bool(values)


def test_unwanted_events_are_skipped_unread_but_answers_are_kept():
    parser = AMIParser(expect_greeting=False, events=["Hangup"])
    data = (
        b"Event: VarSet\r\nVariable: X\r\n\r\n"
        b"Event: CoreShowChannel\r\nActionID: a-1\r\nUniqueid: 1.1\r\n\r\n"
        b"Event: Hangup\r\nUniqueid: 1.1\r\n\r\n"
        b"Response: Success\r\nActionID: a-2\r\n\r\n"
    )
    got = parser.feed(data)
    assert [(m.get("Event"), m.get("ActionID")) for m in got] == [
        ("CoreShowChannel", "a-1"), ("Hangup", None), (None, "a-2"),
    ]  # fmt: skip
    assert parser.skipped == 1
    parser.want("varset")
    assert [m["Variable"] for m in parser.feed(b"Event: VarSet\r\nVariable: Y\r\n\r\n")] == ["Y"]
