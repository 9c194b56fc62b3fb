"""Configuration loading (CONTRACT section 1): defaults, the example file,
environment overrides and the checks that name the key at fault."""

from __future__ import annotations

import configparser
import dataclasses
from pathlib import Path

import pytest

from agi_app import config
from agi_app.config import Config, ConfigError, is_loopback_listen, listen_interface, load

EXAMPLE = Path(__file__).resolve().parents[2] / "agi_app.conf.example"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agi_app.conf"
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> Config:
    return load(write(tmp_path, text), environ={} if environ is None else environ)


# -- defaults and the example file ----------------------------------------


def test_defaults_are_the_contract_values() -> None:
    cfg = load(None, environ={})
    assert cfg == Config()
    assert (cfg.ami.host, cfg.ami.port, cfg.ami.username, cfg.ami.secret) == (
        "127.0.0.1",
        5038,
        "agi_app",
        "change-me",
    )
    assert cfg.agi.listen == "tcp:4573:interface=127.0.0.1"
    assert cfg.http.listen == "tcp:8080:interface=127.0.0.1"
    assert cfg.http.public_url == "http://127.0.0.1:8080"
    assert cfg.http.api_keys == ()
    assert cfg.websocket.listen == "tcp:10150:interface=127.0.0.1"
    assert cfg.websocket.client_ids == ("password",)
    assert cfg.store.path == "var/agi_app.sqlite3"
    assert cfg.store.url == ""  # SQLite unless a PostgreSQL URL is given
    d = cfg.dialing
    assert (d.operator_channel, d.client_channel) == ("PJSIP/{sip}", "PJSIP/{phone}@{trunk}")
    assert (d.default_trunk, d.call_time_to_ext) == ("pstn", 30)
    assert d.recordings_dir == "/var/spool/asterisk/monitor"
    assert d.pbx_recordings_dir == ""
    assert cfg.source is None


def test_an_empty_file_is_the_defaults(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "")
    assert dataclasses.replace(cfg, source=None) == Config()
    assert cfg.source == str(tmp_path / "agi_app.conf")


def test_the_example_file_parses_to_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(EXAMPLE.parent)  # its relative paths are then written as read
    cfg = load(EXAMPLE, environ={})
    assert dataclasses.replace(cfg, source=None) == Config()


def test_the_example_file_documents_every_key() -> None:
    parser = configparser.ConfigParser(inline_comment_prefixes=(";", "#"), interpolation=None)
    parser.read(EXAMPLE, encoding="utf-8")
    in_example = {s: set(parser[s]) for s in parser.sections()}
    # (the [ami:NAME] example is commented out: it has [ami]'s keys)
    known = {
        name: {f.name for f in dataclasses.fields(cls)} for name, cls in config._SECTIONS.items()
    }
    assert in_example == known


# -- several PBXs ------------------------------------------------------------


def test_ami_sections_add_pbxs_with_the_keys_of_ami(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        "[ami]\nhost = 10.0.0.5\n"
        "[ami:east]\nhost = 10.0.0.6\nsecret = s2\nextensions = 2*, 3001\n"
        "[ami:west-2]\nhost = 10.0.0.7\nport = 5039\nping_interval = 5\n",
        environ={"AGI_APP_AMI_USERNAME": "from-env"},
    )
    assert list(cfg.pbxs) == ["default", "east", "west-2"]
    assert cfg.pbxs["default"] is cfg.ami
    assert cfg.ami.username == "from-env"  # the overrides are [ami]'s
    east = cfg.pbxs["east"]
    assert (east.host, east.port, east.username, east.secret) == (
        "10.0.0.6", 5038, "agi_app", "s2",
    )
    assert east.extensions == ("2*", "3001")
    assert east.has_extension("2001") and east.has_extension("3001")
    assert not east.has_extension("30011") and not east.has_extension("1001")
    assert (cfg.pbxs["west-2"].port, cfg.pbxs["west-2"].ping_interval) == (5039, 5.0)
    assert load(None, environ={}).pbxs == {"default": load(None, environ={}).ami}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[ami:East]\nhost = h\n", "[ami:East]: a PBX's name must be 1 to 32 of a-z"),
        ("[ami:]\nhost = h\n", "[ami:]: a PBX's name must be"),
        ("[ami:2nd]\nhost = h\n", "[ami:2nd]: a PBX's name must be"),
        ("[ami:a b]\nhost = h\n", "[ami:a b]: a PBX's name must be"),
        ("[ami:" + "x" * 33 + "]\nhost = h\n", "a PBX's name must be"),
        ("[ami:default]\nhost = h\n", "[ami:default]: 'default' is the PBX of [ami]"),
        ("[ami:east]\nhots = h\n", "[ami:east] hots: unknown key"),
        ("[ami:east]\nport = 70000\nhost = h\n", "[ami:east] port: must be 1..65535"),
        ("[ami:east]\nhost = h\nusername =\n", "[ami:east] username: must not be empty"),
        ("[ami:east]\nhost = h\nextensions = 1@x\n", "[ami:east] extensions: '1@x'"),
        ("[ami:east]\nport = 5038\n",
         "[ami:east] host, port: 127.0.0.1:5038 is the PBX of [ami] already"),
        ("[ami:east]\nhost = H1\n[ami:west]\nhost = h1\n",
         "[ami:west] host, port: h1:5038 is the PBX of [ami:east] already"),
        ("[ami:east]\nhost = h\n[ami:east]\nhost = g\n", "section 'ami:east' already exists"),
        ("[amix]\n", "unknown section [amix]"),
    ],
)
def test_bad_pbx_sections_are_named(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_text(tmp_path, text)
    assert message in str(e.value)


def test_pbx_recordings_falls_back_to_recordings_dir(tmp_path: Path) -> None:
    assert load(None, environ={}).dialing.pbx_recordings == "/var/spool/asterisk/monitor"
    cfg = load_text(tmp_path, "[dialing]\npbx_recordings_dir = /chroot/monitor\n")
    assert cfg.dialing.pbx_recordings == "/chroot/monitor"


# -- reading the file -----------------------------------------------------


def test_values_inline_comments_and_lists(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        "[ami]\n"
        "Port = 6038\n"  # option names are case-insensitive, as in Asterisk's .conf files
        "secret = abc#1;2   ; a comment needs whitespace before it\n"
        "ping_interval = 2.5\n"
        "[http]\n"
        "api_keys = k1, k2 ,, k3 ; comma separated\n"
        "[websocket]\n"
        "client_ids = one,two\n",
    )
    assert cfg.ami.port == 6038
    assert cfg.ami.secret == "abc#1;2"
    assert cfg.ami.ping_interval == 2.5
    assert cfg.http.api_keys == ("k1", "k2", "k3")
    assert cfg.websocket.client_ids == ("one", "two")


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load(tmp_path / "nope.conf", environ={})


def test_a_duplicate_key_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="port"):
        load_text(tmp_path, "[ami]\nport = 1\nport = 2\n")


def test_an_unknown_section_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[amii\]"):
        load_text(tmp_path, "[amii]\nhost = 127.0.0.1\n")


def test_an_unknown_key_is_named_with_its_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[ami\] hots: unknown key"):
        load_text(tmp_path, "[ami]\nhots = 127.0.0.1\n")


# -- environment overrides ------------------------------------------------


def test_environment_overrides_defaults_and_the_file(tmp_path: Path) -> None:
    env = {
        "AGI_APP_AMI_PORT": "6038",
        "AGI_APP_AMI_SECRET": "s3cret",
        "AGI_APP_AMI_ACTION_TIMEOUT": "2.5",
        "AGI_APP_HTTP_API_KEYS": "a,b",
        "AGI_APP_DIALING_CALL_TIME_TO_EXT": "45",
        "AGI_APP_DIALING_PBX_RECORDINGS_DIR": "/pbx/monitor",
    }
    cfg = load_text(tmp_path, "[ami]\nport = 5039\nsecret = from-file\nusername = crm\n", env)
    assert (cfg.ami.port, cfg.ami.secret, cfg.ami.action_timeout) == (6038, "s3cret", 2.5)
    assert cfg.ami.username == "crm"  # not overridden: the file's value stays
    assert cfg.http.api_keys == ("a", "b")
    assert cfg.dialing.call_time_to_ext == 45
    assert cfg.dialing.pbx_recordings == "/pbx/monitor"


def test_the_process_environment_is_read_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGI_APP_STORE_PATH", "/tmp/x.sqlite3")
    assert load(None).store.path == "/tmp/x.sqlite3"


def test_an_empty_environment_value_clears_a_list(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "[http]\napi_keys = k\n", {"AGI_APP_HTTP_API_KEYS": ""})
    assert cfg.http.api_keys == ()


def test_a_bad_environment_value_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"\[agi\] command_timeout"):
        load(None, environ={"AGI_APP_AGI_COMMAND_TIMEOUT": "soon"})


# -- numbers --------------------------------------------------------------


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("AMI_PORT", "abc", r"\[ami\] port: expected a whole number"),
        ("AMI_PORT", "5038.0", r"\[ami\] port: expected a whole number"),
        ("AMI_PORT", "", r"\[ami\] port: expected a whole number"),
        ("AMI_PORT", "-1", r"\[ami\] port: must not be negative"),
        ("AMI_PORT", "0", r"\[ami\] port: must be 1\.\.65535"),
        ("AMI_PORT", "65536", r"\[ami\] port: must be 1\.\.65535"),
        ("DIALING_CALL_TIME_TO_EXT", "0", r"\[dialing\] call_time_to_ext"),
        ("DIALING_CALL_TIME_TO_EXT", "601", r"\[dialing\] call_time_to_ext"),
        ("DIALING_CALL_TIME_TO_CLIENT", "0", r"\[dialing\] call_time_to_client"),
        ("AMI_PING_INTERVAL", "fast", r"\[ami\] ping_interval: expected a number"),
        ("AMI_PING_INTERVAL", "0", r"\[ami\] ping_interval: must be positive"),
        ("AMI_MAX_BACKOFF", "-3", r"\[ami\] max_backoff: must be positive"),
        ("AGI_COMMAND_TIMEOUT", "", r"\[agi\] command_timeout: expected a number"),
        ("STORE_READ_BUDGET_US", "-1", r"\[store\] read_budget_us: must not be negative"),
        ("STORE_READ_BUDGET_US", "100001", r"\[store\] read_budget_us: must be 0\.\.100000"),
        ("STORE_READ_BUDGET_US", "2ms", r"\[store\] read_budget_us: expected a whole number"),
    ],
)
def test_bad_numbers_are_refused_naming_the_key(key: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(None, environ={f"AGI_APP_{key}": value})


def test_numbers_may_have_surrounding_spaces() -> None:
    cfg = load(None, environ={"AGI_APP_AMI_PORT": " 6038 ", "AGI_APP_AMI_PING_INTERVAL": " 5 "})
    assert (cfg.ami.port, cfg.ami.ping_interval) == (6038, 5.0)


@pytest.mark.parametrize("value", ["nan", "inf", "-nan"])
def test_non_finite_seconds_are_refused(value: str) -> None:
    with pytest.raises(ConfigError, match=r"\[ami\] ping_interval"):
        load(None, environ={"AGI_APP_AMI_PING_INTERVAL": value})


# -- control characters ---------------------------------------------------


@pytest.mark.parametrize("char", ["\r", "\n", "\x00"])
@pytest.mark.parametrize(
    "key", ["AMI_SECRET", "AMI_USERNAME", "HTTP_API_KEYS", "DIALING_OPERATOR_CHANNEL", "AMI_PORT"]
)
def test_line_breaks_and_nul_are_refused_anywhere(key: str, char: str) -> None:
    section, name = key.lower().split("_", 1)
    with pytest.raises(ConfigError, match=rf"\[{section}\] {name}: control characters"):
        load(None, environ={f"AGI_APP_{key}": f"PJSIP/{{sip}}{char}Action: Hangup"})
    with pytest.raises(ConfigError, match="control characters"):
        load(None, environ={f"AGI_APP_{key}": f"1000{char}"})  # trailing, too


def test_a_continuation_line_in_the_file_is_refused(tmp_path: Path) -> None:
    # configparser joins an indented next line into the value with "\n".
    with pytest.raises(ConfigError, match=r"\[ami\] secret: control characters"):
        load_text(tmp_path, "[ami]\nsecret = first\n  Action: Originate\n")


@pytest.mark.parametrize("char", ["\x1b", "\x7f", "\x0b", "\x85", "\u2028"])
def test_other_control_characters_are_refused(char: str) -> None:
    with pytest.raises(ConfigError, match=r"\[ami\] secret: control characters"):
        load(None, environ={"AGI_APP_AMI_SECRET": f"abc{char}def"})


# -- the open API must stay on loopback (CONTRACT 1.1) --------------------


@pytest.mark.parametrize(
    "listen",
    [
        "tcp:8080:interface=0.0.0.0",
        "tcp:8080",
        "tcp:8080:interface=203.0.113.5",
        "tcp6:8080",
        # The first interface= is loopback, but Twisted listens on the last.
        "tcp:8080:interface=127.0.0.1:interface=0.0.0.0",
    ],
)
def test_a_non_loopback_listen_without_keys_is_refused(listen: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(None, environ={"AGI_APP_HTTP_LISTEN": listen})
    message = str(info.value)
    assert "[http] api_keys" in message and listen in message


@pytest.mark.parametrize("listen", ["tcp:8080:interface=0.0.0.0", "tcp:8080"])
def test_a_non_loopback_listen_with_keys_is_accepted(listen: str) -> None:
    cfg = load(None, environ={"AGI_APP_HTTP_LISTEN": listen, "AGI_APP_HTTP_API_KEYS": "k1"})
    assert (cfg.http.listen, cfg.http.api_keys) == (listen, ("k1",))


def test_a_loopback_or_unix_listen_may_be_open() -> None:
    for listen in ("tcp:8081:interface=127.0.0.1", "unix:/run/agi_app/http.sock"):
        assert load(None, environ={"AGI_APP_HTTP_LISTEN": listen}).http.api_keys == ()


def test_an_ipv6_loopback_listen_may_be_open() -> None:
    listen = r"tcp6:8080:interface=\:\:1"
    assert load(None, environ={"AGI_APP_HTTP_LISTEN": listen}).http.listen == listen


@pytest.mark.parametrize(
    "description, loopback",
    [
        ("tcp:8080:interface=127.0.0.1", True),
        ("tcp:8080:interface=127.0.0.2", True),  # all of 127/8 is loopback
        ("tcp:interface=127.0.0.1:port=8080", True),  # keyword form, interface first
        ("tcp:8080:127.0.0.1", True),  # positional interface
        ("ssl:8443:privateKey=key.pem:interface=127.0.0.1", True),  # no file is read
        ("tcp:8080:interface=localhost", True),
        ("unix:/run/agi_app.sock", True),
        ("unix:address=/run/agi_app.sock", True),
        ("tcp:8080:interface=0.0.0.0", False),
        ("tcp:8080:0.0.0.0", False),
        ("tcp:8080", False),  # no interface: every address
        ("tcp6:8080", False),  # every IPv6 address
        ("tcp:8080:interface=203.0.113.5", False),
        ("tcp:8080:interface=10.0.0.1", False),
        ("tcp:8080:interface=127.0.0.1x", False),
        ("tcp:8080:interface=", False),
        # Twisted listens on the last interface= given: so does the check.
        ("tcp:8080:interface=127.0.0.1:interface=0.0.0.0", False),
        ("tcp:8080:interface=0.0.0.0:interface=127.0.0.1", True),
    ],
)
def test_is_loopback_listen(description: str, loopback: bool) -> None:
    assert is_loopback_listen(description) is loopback


@pytest.mark.parametrize(
    "description, interface",
    [
        ("tcp:8080:interface=127.0.0.1:interface=0.0.0.0", "0.0.0.0"),
        ("tcp:8080", ""),
        (r"tcp6:8080:interface=\:\:1", "::1"),
        ("tcp6:8080", "::"),
        ("unix:/run/agi_app.sock", None),
    ],
)
def test_listen_interface_reads_as_twisted_does(description: str, interface: str | None) -> None:
    assert listen_interface(description) == interface


@pytest.mark.parametrize(
    "description",
    [
        "tcp:8080:xinterface=127.0.0.1",  # Twisted knows no such argument
        "tcp:8080:interface=127.0.0.1:extra:arguments:here",
        "nosuchkind:8080",
        "",
    ],
)
def test_what_twisted_cannot_listen_on_is_an_error(description: str) -> None:
    with pytest.raises(ValueError):
        listen_interface(description)
    assert is_loopback_listen(description) is False


@pytest.mark.parametrize("key", ["AGI_LISTEN", "HTTP_LISTEN", "WEBSOCKET_LISTEN"])
def test_every_listen_key_is_parsed_by_twisted(key: str) -> None:
    section = key.split("_")[0].lower()
    with pytest.raises(ConfigError, match=rf"\[{section}\] listen: not a Twisted tcp endpoint"):
        load(None, environ={f"AGI_APP_{key}": "tcp:8080:interfaces=127.0.0.1"})


@pytest.mark.parametrize(
    "description", [r"tcp6:8080:interface=\:\:1", r"tcp6:port=8080:interface=\:\:1"]
)
def test_is_loopback_listen_escaped_ipv6(description: str) -> None:
    assert is_loopback_listen(description) is True


def test_escaped_ipv6_any_address_is_not_loopback() -> None:
    assert is_loopback_listen(r"tcp6:8080:interface=\:\:") is False


# -- the other checks -----------------------------------------------------


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("AMI_USERNAME", "", r"\[ami\] username"),
        ("AGI_LISTEN", "4573", r"\[agi\] listen: not a Twisted endpoint"),
        ("WEBSOCKET_LISTEN", "ws://127.0.0.1:10150", r"\[websocket\] listen"),
        ("HTTP_PUBLIC_URL", "ftp://127.0.0.1/", r"\[http\] public_url"),
        ("DIALING_OPERATOR_CHANNEL", "PJSIP/1000", r"\[dialing\] operator_channel"),
        ("DIALING_CLIENT_CHANNEL", "PJSIP/x@{trunk}", r"\[dialing\] client_channel"),
        ("DIALING_DEFAULT_TRUNK", "a/b", r"\[dialing\] default_trunk"),
        ("DIALING_DEFAULT_TRUNK", "", r"\[dialing\] default_trunk"),
        ("WEBSOCKET_CLIENT_IDS", " , ", r"\[websocket\] client_ids"),
    ],
)
def test_other_bad_values_name_the_key(key: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(None, environ={f"AGI_APP_{key}": value})


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://agi:pw@127.0.0.1:5432/agi_app",
        "postgres://db.example/agi_app",
        "postgresql://agi@[::1]/agi_app?sslmode=disable",
        "postgresql:///agi_app?host=/run/postgresql",
    ],
)
def test_a_postgresql_store_url_is_accepted(url: str) -> None:
    assert load(None, environ={"AGI_APP_STORE_URL": url}).store.url == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://h/db", r"must be postgresql://user:pass@host:port/db"),
        ("postgresql:h/db", r"must be postgresql://"),
        ("/var/lib/agi_app.sqlite3", r"must be postgresql://"),
        ("postgresql://u:pw@h:99999/db", r"the port must be a number 1\.\.65535"),
        ("postgresql://u:pw@h:0/db", r"the port must be a number"),
        ("postgresql://u:pw@h:x/db", r"the port must be a number"),
        ("postgresql://u:pw@/db", r"names no host"),
        ("postgresql://u:pw@h/", r"must name one database"),
        ("postgresql://u:pw@h/a/b", r"must name one database"),
        ("postgresql://u:pw@h/db#x", r"a URL fragment"),
    ],
)
def test_a_bad_store_url_is_refused_without_its_password(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"^\[store\] url: " + message) as e:
        load(None, environ={"AGI_APP_STORE_URL": url})
    assert "pw" not in str(e.value)


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_trunks_are_a_comma_separated_list_of_trunk_names(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "[dialing]\ndefault_trunk = pstn\ntrunks = gsm, pstn ,sip-2\n")
    assert cfg.dialing.trunks == ("gsm", "pstn", "sip-2")
    assert cfg.dialing.all_trunks == ("pstn", "gsm", "sip-2")
    assert load(None, environ={"AGI_APP_DIALING_TRUNKS": "b2"}).dialing.all_trunks == ("pstn", "b2")
    for bad in ("gsm,a/b", "x" * 33, "pstn@host"):
        with pytest.raises(ConfigError, match=r"\[dialing\] trunks: '.*' must match"):
            load(None, environ={"AGI_APP_DIALING_TRUNKS": bad})
