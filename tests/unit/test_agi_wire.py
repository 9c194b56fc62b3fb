"""FastAGI command building and reply parsing (agi_app.agi.wire)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agi_app.agi.errors import AGIArgumentError, AGIProtocolError
from agi_app.agi.wire import (
    DEAD_CHANNEL_COMMANDS,
    MAX_COMMAND_BYTES,
    STRICT_FORBIDDEN,
    AGIReply,
    build_command,
    build_exec,
    exec_data,
    normalize_verb,
    parse_success,
    quote,
)


def asterisk_tokenize(line: str) -> list[str]:
    """How Asterisk 22 res_agi.c parse_args() splits a command line: spaces
    and tabs separate words, '"' toggles quoting (and starts a word when it
    comes after whitespace), '\\' makes the next character literal."""
    words: list[str] = []
    cur: list[str] | None = None
    quoted = escaped = False
    for ch in line:
        if ch == '"' and not escaped:
            quoted = not quoted
            if quoted and cur is None:
                cur = []
                words.append("")
            continue
        if ch in " \t" and not quoted and not escaped:
            if cur is not None:
                words[-1] = "".join(cur)
            cur = None
            continue
        if ch == "\\" and not escaped:
            escaped = True
            continue
        escaped = False
        if cur is None:
            cur = []
            words.append("")
        cur.append(ch)
    if cur is not None:
        words[-1] = "".join(cur)
    return words


def app_split(data: str) -> list[str]:
    """How main/app.c __ast_app_separate_args(remove_chars=1) splits an
    application's argument on ','."""
    args, cur = [], []
    paren = bracket = 0
    quote_ = False
    it = iter(data)
    for ch in it:
        if ch == "(":
            paren += 1
        elif ch == ")":
            paren = max(0, paren - 1)
        elif ch == "[":
            bracket += 1
        elif ch == "]":
            bracket = max(0, bracket - 1)
        elif ch == '"':
            quote_ = not quote_
            continue
        elif ch == "\\":
            nxt = next(it, "")
            cur.append(nxt)
            continue
        elif ch == "," and not (paren or quote_ or bracket):
            args.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    args.append("".join(cur))
    return args


# -- quoting ----------------------------------------------------------------

def test_quote_escapes_backslash_and_double_quote():
    assert quote('say "hi" \\o/') == '"say \\"hi\\" \\\\o/"'
    assert quote("") == '""'
    assert quote(5) == '"5"'


@pytest.mark.parametrize("bad", ["a\rb", "a\nb", "a\x00b", "\n", "tail\r"])
def test_quote_refuses_line_breakers(bad):
    with pytest.raises(AGIArgumentError):
        quote(bad)


def test_quote_refuses_other_types():
    with pytest.raises(AGIArgumentError):
        quote(None)
    with pytest.raises(AGIArgumentError):
        quote(True)
    with pytest.raises(AGIArgumentError):
        quote(b"bytes")


def test_build_command_tokenizes_back_to_the_arguments():
    line = build_command("STREAM FILE", ("agi_app/please wait", ""))
    assert line == b'STREAM FILE "agi_app/please wait" ""\n'
    assert asterisk_tokenize(line.decode()[:-1]) == ["STREAM", "FILE", "agi_app/please wait", ""]


def test_build_command_without_arguments():
    assert build_command("NOOP", ()) == b"NOOP\n"


_text = st.text(
    alphabet=st.characters(blacklist_characters="\r\n\x00", blacklist_categories=("Cs",)),
    max_size=40,
)


@given(st.lists(_text, max_size=5))
def test_any_text_round_trips_through_asterisks_tokenizer(args):
    line = build_command("SET VARIABLE", tuple(args)).decode("utf-8")
    assert line.endswith("\n")
    assert asterisk_tokenize(line[:-1]) == ["SET", "VARIABLE", *args]


def test_line_limit_is_8191_bytes_with_the_newline():
    overhead = len(b'VERBOSE ""\n')
    fits = "x" * (MAX_COMMAND_BYTES - overhead)
    assert len(build_command("VERBOSE", (fits,))) == MAX_COMMAND_BYTES
    with pytest.raises(AGIArgumentError, match="8191"):
        build_command("VERBOSE", (fits + "x",))


def test_line_limit_counts_utf8_bytes():
    overhead = len(b'VERBOSE ""\n')
    # "я" is two bytes in UTF-8
    with pytest.raises(AGIArgumentError):
        build_command("VERBOSE", ("я" * ((MAX_COMMAND_BYTES - overhead) // 2 + 1),))


def test_normalize_verb():
    assert normalize_verb(" get   variable ") == "GET VARIABLE"
    assert normalize_verb("Stream File") == "STREAM FILE"


@pytest.mark.parametrize(
    "bad",
    ["", "  ", "GET\x00VARIABLE", "NOOP\nANSWER", "GET\tDATA", 'EXEC"', "NOOP1", "A_B",
     "SET VARIABLE;", "NOOP\r", "stra\u00dfe", None],
)
def test_normalize_verb_refuses_anything_but_letters(bad):
    with pytest.raises(AGIArgumentError):
        normalize_verb(bad)


def test_dead_channel_commands_match_res_agi():
    # the commands registered with dead=1 in Asterisk 22 res_agi.c commands[]
    assert {"EXEC", "GET VARIABLE", "GET FULL VARIABLE", "SET VARIABLE", "NOOP",
            "VERBOSE", "DATABASE GET", "DATABASE PUT", "DATABASE DEL",
            "DATABASE DELTREE"} <= DEAD_CHANNEL_COMMANDS
    for live_only in ("ANSWER", "HANGUP", "STREAM FILE", "GET DATA", "WAIT FOR DIGIT",
                      "SAY DIGITS", "GOSUB", "SET CONTEXT", "CHANNEL STATUS"):
        assert live_only not in DEAD_CHANNEL_COMMANDS


# -- EXEC -------------------------------------------------------------------

def test_build_exec_joins_with_commas_in_one_quoted_argument():
    line = build_exec("Dial", ("PJSIP/101", "30", "U(sub^a)"))
    assert line == b'EXEC Dial "PJSIP/101,30,U(sub^a)"\n'
    words = asterisk_tokenize(line.decode()[:-1])
    assert words == ["EXEC", "Dial", "PJSIP/101,30,U(sub^a)"]
    assert app_split(words[2]) == ["PJSIP/101", "30", "U(sub^a)"]


def test_build_exec_without_arguments():
    assert build_exec("Answer", ()) == b"EXEC Answer\n"


@pytest.mark.parametrize("app", ["", "Dial Foo", "Dial\n", "Set(x=1)", "Dial,", 'A"'])
def test_build_exec_refuses_bad_application_names(app):
    with pytest.raises(AGIArgumentError):
        build_exec(app, ())


@pytest.mark.parametrize("strict", [False, True])
def test_exec_refuses_comma_always(strict):
    with pytest.raises(AGIArgumentError, match="separator"):
        exec_data("Playback", ("a,b",), strict)


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("bad", ["a\rb", "a\nb", "a\x00b"])
def test_exec_refuses_line_breakers(strict, bad):
    with pytest.raises(AGIArgumentError):
        exec_data("Playback", ("ok", bad), strict)


@pytest.mark.parametrize("ch", sorted(STRICT_FORBIDDEN))
def test_exec_strict_refuses_each_special_character(ch):
    with pytest.raises(AGIArgumentError):
        exec_data("Dial", ("PJSIP/1" + ch + "2",), strict=True)


def test_exec_strict_allows_plain_values():
    assert exec_data("Dial", ("PJSIP/+380639920000@pstn", "30"), strict=True) == (
        "PJSIP/+380639920000@pstn,30"
    )


@pytest.mark.parametrize(
    "bad", ["U(sub", "a[b", 'say "hi', "trailing\\", "((x)"]
)
def test_exec_refuses_arguments_that_would_swallow_separators(bad):
    with pytest.raises(AGIArgumentError, match="swallow"):
        exec_data("Dial", (bad, "30"))


@pytest.mark.parametrize("ok", ["U(sub^a)", "x[1]", 'say "hi"', "a\\(b", "a)b"])
def test_exec_allows_balanced_arguments(ok):
    data = exec_data("Dial", (ok, "30"))
    assert len(app_split(data)) == 2


@pytest.mark.parametrize("value", ["x,G(evil)", "x\nEXEC System rm", "x)\n", '",G(evil)"'])
def test_exec_injection_attempts_are_refused(value):
    with pytest.raises(AGIArgumentError):
        build_exec("Dial", (value,))
    with pytest.raises(AGIArgumentError):
        build_exec("Dial", (value,), strict=True)


def test_exec_balanced_quotes_stay_one_argument_unless_strict():
    line = build_exec("Playback", ('x" "y', "z"))
    words = asterisk_tokenize(line.decode()[:-1])
    assert words == ["EXEC", "Playback", 'x" "y,z']
    assert app_split(words[2]) == ["x y", "z"]
    with pytest.raises(AGIArgumentError):
        build_exec("Playback", ('x" "y',), strict=True)


# -- replies ----------------------------------------------------------------

@pytest.mark.parametrize(
    "line, expected",
    [
        ("200 result=0", AGIReply(200, "0")),
        ("200 result=1 (hello)", AGIReply(200, "1", "hello")),
        ("200 result=1 ()", AGIReply(200, "1", "")),
        ("200 result=1 (a b (c) d)", AGIReply(200, "1", "a b (c) d")),
        ("200 result=1 ((x)", AGIReply(200, "1", "(x")),
        ("200 result=1 (x) endpos=5)", AGIReply(200, "1", "x) endpos=5")),
        ("200 result=0 endpos=16000", AGIReply(200, "0", None, 16000)),
        ("200 result=-1 endpos=0", AGIReply(200, "-1", None, 0)),
        ("200 result=49 (dtmf) endpos=8000", AGIReply(200, "49", "dtmf", 8000)),
        ("200 result=12 (timeout)", AGIReply(200, "12", "timeout")),
        ("200 result= (timeout)", AGIReply(200, "", "timeout")),
        ("200 result=", AGIReply(200, "")),
        ("200 result=0 Gosub complete", AGIReply(200, "0", "Gosub complete")),
        ("200 result=-1 Gosub label not found", AGIReply(200, "-1", "Gosub label not found")),
        ("200 result=1 (cut at a newline", AGIReply(200, "1", "cut at a newline")),
        ("200 result=1 (Привет, мир)", AGIReply(200, "1", "Привет, мир")),
        ("200 result=1 (endpos=3)", AGIReply(200, "1", "endpos=3")),
    ],
)
def test_parse_success(line, expected):
    reply = parse_success(line)
    assert reply == expected
    assert reply.line == line


def test_parse_success_refuses_missing_result():
    with pytest.raises(AGIProtocolError):
        parse_success("200 ok")


def test_result_int():
    assert parse_success("200 result=-2").result_int == -2
    with pytest.raises(AGIProtocolError):
        _ = parse_success("200 result=12#").result_int
