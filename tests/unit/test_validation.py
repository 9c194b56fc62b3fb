"""The input rules of CONTRACT section 3: what may reach an AMI action, an
AGI command or a dial string."""

from __future__ import annotations

import re
import sys

import jsonschema_rs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agi_app import validation
from agi_app.validation import (
    FORBIDDEN,
    InvalidInput,
    assert_wire_safe,
    display_text,
    extension,
    flag,
    identifier,
    phone,
    seconds,
)

# The contract's own patterns, matched over ASCII only.
PHONE_RULE = re.compile(r"\+?[0-9]{3,15}", re.ASCII)
EXTENSION_RULE = re.compile(r"[A-Za-z0-9_-]{1,32}", re.ASCII)
IDENTIFIER_RULE = re.compile(r"[A-Za-z0-9_.:-]{1,64}", re.ASCII)

# Values an attacker (or a sloppy CRM) sends to break out of a dial string,
# an AMI header or an AGI command line.  None of them is valid anywhere.
INJECTIONS = [
    "123&PJSIP/1001",  # a second dial target
    "123,1,G(x)",  # extra Dial arguments and options
    "1000\r\nAction: Hangup",  # a second AMI action
    "1000\r\n\r\nAction: Originate",
    "1000\n",  # a trailing newline ends an AGI command early
    "1000\r",
    "\n1000",
    "10\x0000",  # NUL truncates C strings inside Asterisk
    "1000\x00",
    "1000|1001",
    "1000;1001",
    '1000"',
    "1000'",
    "1000`",
    "1000\\",
    "1000 1001",
    "1000\t",
    "PJSIP/1000",
    "1000@trunk",
    "(1000)",
    "٠١٢٣",  # Arabic-Indic digits: \d would take them, [0-9] must not
    "۱۲۳۴",  # Extended Arabic-Indic (Persian) digits
    "１２３４",  # full-width digits
    "١٠٠٠\n",
    "",
]
NOT_TEXT = [None, True, False, ["123"], ("123",), {"phone": "123"}, 123.0, b"1234", object()]
CHECKERS = {
    "phone": lambda v: phone(v),
    "extension": lambda v: extension(v),
    "identifier": lambda v: identifier(v, "order_id"),
}


# -- the contract's patterns ----------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["123", "+123", "0443334023", "380639920000", "+79817654321", "1" * 15, "+" + "9" * 15],
)
def test_phone_accepts(value: str) -> None:
    assert phone(value) == value


@pytest.mark.parametrize(
    "value",
    ["12", "+12", "1" * 16, "+" + "1" * 16, "++123", "123+", "+", "12-34", " 123", "123 ", "0x123"],
)
def test_phone_refuses(value: str) -> None:
    with pytest.raises(InvalidInput) as info:
        phone(value)
    assert (info.value.field, info.value.code) == ("phone", "invalid_phone")


def test_phone_takes_a_whole_number_as_its_digits() -> None:
    assert phone(380639920000) == "380639920000"
    with pytest.raises(InvalidInput):
        phone(12)
    with pytest.raises(InvalidInput):
        phone(-123)


@pytest.mark.parametrize("value", ["1000", "a", "op_1-x", "Z" * 32, "-", "_"])
def test_extension_accepts(value: str) -> None:
    assert extension(value) == value


@pytest.mark.parametrize("value", ["Z" * 33, "10.0", "10:0", "оператор", "1000#", "*97", "1000+"])
def test_extension_refuses(value: str) -> None:
    with pytest.raises(InvalidInput) as info:
        extension(value)
    assert (info.value.field, info.value.code) == ("sip", "invalid_sip")


@pytest.mark.parametrize("value", ["15", "ord-7.1:a_b", "x" * 64, "2026-11-25T21:04"])
def test_identifier_accepts(value: str) -> None:
    assert identifier(value, "order_id") == value


@pytest.mark.parametrize("value", ["x" * 65, "a b", "a,b", "a/b", "a+b", "a#b", "a=b", "заказ"])
def test_identifier_refuses(value: str) -> None:
    with pytest.raises(InvalidInput) as info:
        identifier(value, "external_key")
    assert (info.value.field, info.value.code) == ("external_key", "invalid_external_key")


def test_errors_name_the_field_they_are_checked_as() -> None:
    with pytest.raises(InvalidInput) as info:
        phone("12a", field="phone_number")
    err = info.value
    assert (err.field, err.code) == ("phone_number", "invalid_phone_number")
    assert "phone_number" in err.message and str(err) == err.message
    assert isinstance(err, ValueError)


@pytest.mark.parametrize("name, check", list(CHECKERS.items()))
@pytest.mark.parametrize("value", [None, ""])
def test_missing_values_have_their_own_code(name: str, check, value) -> None:
    with pytest.raises(InvalidInput) as info:
        check(value)
    assert info.value.code.startswith("missing_")
    assert "required" in info.value.message


# -- injections -----------------------------------------------------------


@pytest.mark.parametrize("name, check", list(CHECKERS.items()))
@pytest.mark.parametrize("value", INJECTIONS, ids=repr)
def test_injections_are_refused(name: str, check, value: str) -> None:
    with pytest.raises(InvalidInput):
        check(value)


@pytest.mark.parametrize("name, check", list(CHECKERS.items()))
@pytest.mark.parametrize("value", NOT_TEXT, ids=repr)
def test_values_that_are_not_text_are_refused(name: str, check, value: object) -> None:
    with pytest.raises(InvalidInput):
        check(value)


@pytest.mark.parametrize("value", ["1234567890123456", "+1234567890123456", "9" * 40])
def test_sixteen_or_more_digits_are_not_a_phone(value: str) -> None:
    with pytest.raises(InvalidInput):
        phone(value)


@pytest.mark.parametrize(
    "value",
    [v for v in INJECTIONS if any(c in FORBIDDEN for c in v)] + ["<1000>", "a\tb", "a\u2028b"],
    ids=repr,
)
def test_display_text_refuses_separators_quotes_and_controls(value: str) -> None:
    with pytest.raises(InvalidInput) as info:
        display_text(value, "caller_id_for_employee")
    assert info.value.field == "caller_id_for_employee"


@pytest.mark.parametrize("value", ["Private", "CRM client id 3320", "Иван Петров", "٠١٢٣", "#1"])
def test_display_text_accepts_plain_text(value: str) -> None:
    assert display_text(value, "caller_id_for_employee") == value


def test_display_text_length() -> None:
    assert display_text("x" * 64, "name") == "x" * 64
    with pytest.raises(InvalidInput):
        display_text("x" * 65, "name")
    assert display_text("x" * 10, "name", max_len=10) == "x" * 10
    with pytest.raises(InvalidInput):
        display_text("x" * 11, "name", max_len=10)


@pytest.mark.parametrize("value", NOT_TEXT + [""], ids=repr)
def test_display_text_refuses_non_text(value: object) -> None:
    with pytest.raises(InvalidInput):
        display_text(value, "name")


def test_forbidden_covers_the_contract_list() -> None:
    assert set("\r\n\x00,&|()/@\"'") <= FORBIDDEN


# -- seconds and flags ----------------------------------------------------


@pytest.mark.parametrize("value, expected", [(30, 30), ("30", 30), (" 45 ", 45), ("0600", 600)])
def test_seconds_accepts(value: object, expected: int) -> None:
    assert seconds(value, "limit_call_time") == expected


@pytest.mark.parametrize(
    "value", [0, "0", 86401, "-1", "3.5", 3.5, "1e3", "٣٠", "３０", "30s", True, False, [30]]
)
def test_seconds_refuses(value: object) -> None:
    with pytest.raises(InvalidInput) as info:
        seconds(value, "limit_call_time")
    assert info.value.field == "limit_call_time"


@pytest.mark.parametrize("value", INJECTIONS, ids=repr)
def test_seconds_refuses_injections_or_returns_a_bare_number(value: str) -> None:
    # Whitespace around the digits is stripped ("1000\n" is 1000): what comes
    # out is an int, so nothing but digits can reach the PBX.
    if value.strip().isascii() and value.strip().isdigit():
        assert seconds(value, "call_time_to_ext", maximum=10**6) == int(value)
        return
    with pytest.raises(InvalidInput):
        seconds(value, "call_time_to_ext", maximum=10**6)


def test_seconds_bounds() -> None:
    assert seconds(5, "t", minimum=5, maximum=6) == 5
    assert seconds("6", "t", minimum=5, maximum=6) == 6
    for bad in (4, 7):
        with pytest.raises(InvalidInput, match="between 5 and 6"):
            seconds(bad, "t", minimum=5, maximum=6)


@pytest.mark.parametrize(
    "value, expected",
    [
        (True, True),
        (False, False),
        (1, True),
        (0, False),
        ("1", True),
        ("0", False),
        ("true", True),
        ("False", False),
        (" yes ", True),
        ("no", False),
        ("on", True),
        ("off", False),
    ],
)
def test_flag_accepts(value: object, expected: bool) -> None:
    assert flag(value, "playback_waiting") is expected


@pytest.mark.parametrize("value", [2, -1, "2", "maybe", "1\n0", "", None, 1.0, ["1"]])
def test_flag_refuses(value: object) -> None:
    with pytest.raises(InvalidInput) as info:
        flag(value, "playback_waiting")
    assert info.value.field == "playback_waiting"


# -- the last line of defence ---------------------------------------------


def test_assert_wire_safe() -> None:
    assert assert_wire_safe("PJSIP/1000@pstn") == "PJSIP/1000@pstn"
    for bad in ("a\rb", "a\nb", "a\x00b", "trailing\n"):
        with pytest.raises(InvalidInput) as info:
            assert_wire_safe(bad, "channel")
        assert (info.value.field, info.value.code) == ("channel", "unsafe_value")


# -- properties -----------------------------------------------------------

DANGEROUS = sorted(FORBIDDEN | set("<>"))
# Characters near the rules' edges: allowed ones, forbidden ones, Unicode digits
# and letters, separators and controls.
EDGE_CHARS = (
    list("09+-_.:aZ <>#*=$%{}[]~!?\t\x0b\x0c\x7f\x85\u00a0\u2028\u200b")
    + DANGEROUS
    + list("٠١٢۳４９оЯ")
)
VALID = st.one_of(
    st.from_regex(PHONE_RULE, fullmatch=True),
    st.from_regex(EXTENSION_RULE, fullmatch=True),
    st.from_regex(IDENTIFIER_RULE, fullmatch=True),
)


def _insert(args: tuple[str, str, int]) -> str:
    value, char, where = args
    at = where % (len(value) + 1)
    return value[:at] + char + value[at:]


ODD_CHAR = st.one_of(st.sampled_from(DANGEROUS), st.sampled_from(EDGE_CHARS))
ANY_TEXT = st.one_of(
    st.text(max_size=80),
    st.text(alphabet=st.sampled_from(EDGE_CHARS), max_size=80),
    VALID,
    # almost valid: one odd character anywhere, and at the end (where "$" is lenient)
    st.tuples(VALID, ODD_CHAR, st.integers(min_value=0)).map(_insert),
    st.tuples(VALID, ODD_CHAR).map("".join),
)
TEXT_CHECKS = {
    "phone": lambda v: phone(v),
    "extension": lambda v: extension(v),
    "identifier": lambda v: identifier(v, "order_id"),
    "display_text": lambda v: display_text(v, "name"),
}


@settings(max_examples=1000)
@given(value=ANY_TEXT)
def test_whatever_passes_carries_nothing_dangerous(value: str) -> None:
    for check in TEXT_CHECKS.values():
        try:
            clean = check(value)
        except InvalidInput:
            continue
        assert clean == value
        assert not set(clean) & set(DANGEROUS)
        assert all(c.isprintable() for c in clean)


@given(
    rule=st.sampled_from([PHONE_RULE, EXTENSION_RULE, IDENTIFIER_RULE]).flatmap(
        lambda r: st.tuples(st.just(r), st.from_regex(r, fullmatch=True))
    ),
    bad=st.sampled_from(DANGEROUS),
    where=st.integers(min_value=0),
)
def test_a_valid_value_with_one_dangerous_character_is_refused(rule, bad: str, where: int) -> None:
    pattern, value = rule
    check = {
        PHONE_RULE: phone,
        EXTENSION_RULE: extension,
        IDENTIFIER_RULE: lambda v: identifier(v, "order_id"),
    }[pattern]
    assert check(value) == value
    with pytest.raises(InvalidInput):
        check(_insert((value, bad, where)))


@given(value=st.from_regex(PHONE_RULE, fullmatch=True))
def test_phone_output_is_ascii_digits_and_plus(value: str) -> None:
    assert set(phone(value)) <= set("+0123456789")


# -- one rule per kind of value, the same for Python and for JSON Schema --------

RULES = {
    "PHONE": validation.PHONE,
    "EXTENSION": validation.EXTENSION,
    "IDENTIFIER": validation.IDENTIFIER,
    "PROMPT_NAME": validation.PROMPT_NAME,
    "SECONDS": validation.SECONDS,
    "WHOLE_NUMBER": validation.WHOLE_NUMBER,
    "FLAG": validation.FLAG,
    "DISPLAY_TEXT": validation.DISPLAY_TEXT,
    "word_list": validation.word_list(["offline", "online", "inuse"]),
    "word_choice": validation.word_choice(["GET", "POST"]),
}


def test_the_contract_patterns_are_the_rules() -> None:
    assert validation.PHONE.pattern == r"^\+?[0-9]{3,15}$"
    assert validation.EXTENSION.pattern == r"^[A-Za-z0-9_-]{1,32}$"
    assert validation.IDENTIFIER.pattern == r"^[A-Za-z0-9_.:-]{1,64}$"


def test_blanks_are_what_strip_removes() -> None:
    blanks = validation.Rule(f"[{validation.WHITESPACE}]", "a blank")
    spaces = [chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()]
    assert [c for c in map(chr, range(sys.maxunicode + 1)) if blanks.match(c)] == spaces


@settings(max_examples=300)
@given(name=st.sampled_from(sorted(RULES)), data=st.data())
def test_json_schema_reads_each_pattern_as_python_does(name: str, data) -> None:
    rule = RULES[name]
    valid = st.from_regex(rule.pattern, fullmatch=True)
    value = data.draw(st.one_of(
        valid, st.tuples(valid, ODD_CHAR, st.integers(min_value=0)).map(_insert),
        valid.map(str.upper), valid.map(lambda s: s + "\n"), ANY_TEXT,
    ))  # fmt: skip
    schema = jsonschema_rs.validator_for(rule.schema())
    assert schema.is_valid(value) == rule.match(value), value


@pytest.mark.parametrize("value", ["1", " YES ", "\u3000off\x1c", "0\n", "TrUe"])
def test_flag_words_in_any_case_with_blanks(value: str) -> None:
    assert flag(value, "f") is (value.strip().lower() in ("1", "yes", "true"))
