"""The IVR menu file: the worked example loads, defaults are inherited, and
every mistake is refused with a message that names the section and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from agi_app.ivr.menus import Action, MenuError, load_menus, parse_menus

EXAMPLE = Path(__file__).resolve().parents[2] / "ivr.conf.example"


def test_the_worked_example_loads():
    menus = load_menus(EXAMPLE)
    assert set(menus) == {"main", "sales", "support", "confirm"}
    main = menus["main"]
    assert main.prompt == "ivr-main"
    assert main.choices["1"] == Action("menu", "sales")
    assert main.choices["0"] == Action("extension", "1000")
    assert main.choices["*"] == Action("repeat")
    assert main.choices["#"] == Action("hangup")
    # inherited from [defaults]
    assert (main.timeout, main.retries) == (5, 3)
    assert (main.invalid_prompt, main.timeout_prompt, main.goodbye_prompt) == (
        "ivr-invalid", "ivr-timeout", "ivr-goodbye",
    )  # fmt: skip
    sales = menus["sales"]
    assert sales.timeout == 4
    assert sales.choices["1"] == Action("play", "offer", Action("menu", "sales"))
    assert sales.exhausted == Action("extension", "1000")
    assert menus["support"].choices == {}
    assert menus["support"].then == Action("extension", "1001")
    assert menus["confirm"].choices["2"] == Action("number", "380441234567")
    assert menus["confirm"].retries == 2


def test_describe_is_what_was_written():
    menus = load_menus(EXAMPLE)
    assert menus["sales"].choices["1"].describe() == "play offer then menu sales"
    assert menus["main"].choices["0"].describe() == "extension 1000"


def test_prompts_can_be_switched_off():
    menus = parse_menus(
        "[m]\nprompt = ivr-main\ninvalid_prompt = none\ntimeout_prompt =\n1 = hangup"
    )
    assert menus["m"].invalid_prompt is None and menus["m"].timeout_prompt is None


@pytest.mark.parametrize(
    "text,where",
    [
        ("[main]\n1 = hangup", "[main]: prompt is required"),
        ("[main]\nprompt = ivr-main", "[main]: a menu needs digit choices"),
        ("[main]\nprompt = ivr-main\n5 = menu nowhere", "[main] 5: no menu [nowhere]"),
        ("[main]\nprompt = ../../etc/passwd\n1 = hangup", "[main] prompt:"),
        ("[main]\nprompt = ivr main\n1 = hangup", "[main] prompt:"),
        ("[main]\nprompt = ivr-main\n1 = extension 10&PJSIP/11", "[main] 1:"),
        ("[main]\nprompt = ivr-main\n1 = number 123,1,G(x)", "[main] 1:"),
        ("[main]\nprompt = ivr-main\n1 = number 12", "[main] 1:"),
        ("[main]\nprompt = ivr-main\n1 = teleport home", "[main] 1: unknown action"),
        ("[main]\nprompt = ivr-main\n1 = hangup now", "[main] 1: hangup takes nothing"),
        ("[main]\nprompt = ivr-main\n1 = play offer and hangup", "[main] 1: write 'play"),
        ("[main]\nprompt = ivr-main\n1 = menu", "[main] 1: menu needs a target"),
        ("[main]\nprompt = ivr-main\n12 = hangup", "[main] 12: unknown key"),
        ("[main]\nprompt = ivr-main\nA = hangup", "[main] A: unknown key"),
        ("[main]\nprompt = ivr-main\n1 = hangup\ntimeout = 0", "[main] timeout: must be 1..60"),
        ("[main]\nprompt = ivr-main\n1 = hangup\nretries = many", "[main] retries: expected"),
        ("[bad name]\nprompt = ivr-main\n1 = hangup", "[bad name]: menu names"),
        ("[defaults]\nprompt = x\n[m]\nprompt = ivr-main\n1 = hangup", "[defaults] prompt"),
        ("[main]\nprompt = ivr-main\n1 = hangup\n1 = repeat", "main"),
        ("", "no menu defined"),
        ("[main]\nprompt = ivr-main\nexhausted = menu gone\n1 = hangup",
         "[main] exhausted: no menu [gone]"),
    ],
)
def test_mistakes_are_refused_naming_section_and_key(text, where):
    with pytest.raises(MenuError) as raised:
        parse_menus(text, "ivr.conf")
    assert where in str(raised.value)
    assert str(raised.value).startswith("ivr.conf")


def test_hash_and_star_are_keys_not_comments():
    menus = parse_menus("[m]\nprompt = ivr-main\n# = hangup\n* = repeat\n; a comment\n")
    assert set(menus["m"].choices) == {"#", "*"}


def test_missing_file(tmp_path):
    with pytest.raises(MenuError, match="cannot read IVR menus"):
        load_menus(tmp_path / "nope.conf")
