"""The sandbox PBX's configuration, rendered without a chroot or Asterisk:
every template is filled in, with the instance's ports, AMI user and
operators, and the agi_app settings that go with it load as a config."""

from __future__ import annotations

import configparser
from importlib import resources
from itertools import pairwise

import pytest

from agi_app.config import load
from agi_app.sandbox import pbx
from agi_app.sandbox import pbx_config as pc

PROFILE = pbx.test_profile({"AGI_APP_SANDBOX_PORT_OFFSET": "1400"})
MODULES = ["chan_pjsip.so", "chan_iax2.so", "app_dial.so", "cdr_csv.so", "res_ari.so"]


@pytest.fixture(scope="module")
def configs() -> dict[str, str]:
    return pc.asterisk_configs(
        PROFILE,
        name="t1",
        pbx_dir="/srv/agi_app/t1",
        module_dir="/usr/lib/x86_64-linux-gnu/asterisk/modules",
        modules=MODULES,
        ami_username="agi_app",
        ami_secret="s3cret",
    )


def test_every_template_is_rendered_with_no_placeholder_left(configs):
    templates = resources.files("agi_app.sandbox") / "templates"
    assert set(configs) == {t.name for t in templates.iterdir() if t.name.endswith(".conf")}
    assert {"asterisk.conf", "manager.conf", "pjsip.conf", "extensions.conf"} <= set(configs)
    for name, text in configs.items():
        assert "{{" not in text and "}}" not in text, name


def test_the_instance_lives_in_its_own_folder(configs):
    asterisk = configs["asterisk.conf"]
    assert "astetcdir => /srv/agi_app/t1/etc" in asterisk
    assert "astmoddir => /usr/lib/x86_64-linux-gnu/asterisk/modules" in asterisk
    assert "systemname = sandbox-t1" in asterisk


def test_the_profile_ports_reach_every_file(configs):
    assert f"port = {PROFILE.ami_port}" in configs["manager.conf"]
    assert f"bind = 127.0.0.1:{PROFILE.sip_port}" in configs["pjsip.conf"]
    assert f"contact = sip:127.0.0.1:{PROFILE.pstn_port}" in configs["pjsip.conf"]
    assert f"AGI_APP_URL = agi://127.0.0.1:{PROFILE.agi_port}" in configs["extensions.conf"]
    rtp = configs["rtp.conf"]
    assert f"rtpstart = {PROFILE.rtp_start}" in rtp and f"rtpend = {PROFILE.rtp_end}" in rtp


def test_the_ami_user_and_every_operator_are_configured(configs):
    manager = configparser.ConfigParser(strict=False, interpolation=None)
    manager.read_string(configs["manager.conf"])
    assert manager["agi_app"]["secret"] == "s3cret"
    pjsip = configs["pjsip.conf"]
    for number in pc.OPERATORS:
        assert f"[{number}](operator)\naors = {number}\n" in pjsip
        assert f"callerid = Operator {number} <{number}>" in pjsip
        assert f"[{number}](operator-aor)" in pjsip


def test_the_ami_read_classes_are_the_readmes_or_chosen():
    def read_classes(**kwargs) -> str:
        text = pc.asterisk_configs(
            PROFILE, name="t1", pbx_dir="/srv/agi_app/t1", module_dir="/m", modules=[],
            ami_username="agi_app", ami_secret="s3cret", **kwargs,
        )["manager.conf"]  # fmt: skip
        manager = configparser.ConfigParser(strict=False, interpolation=None)
        manager.read_string(text)
        return manager["agi_app"]["read"]

    assert read_classes() == pc.AMI_READ["readme"] == "system,call,agent,user,dtmf,reporting"
    assert read_classes(ami_read=pc.AMI_READ["all"]) == "all"
    with pytest.raises(ValueError):
        read_classes(ami_read="all\n[evil]")


def test_only_modules_that_bind_ports_or_reach_out_are_not_loaded(configs):
    lines = [x for x in configs["modules.conf"].splitlines() if x.startswith("noload")]
    assert lines == ["noload => cdr_csv.so", "noload => chan_iax2.so", "noload => res_ari.so"]
    assert pc.noload_lines(["chan_pjsip.so", "app_dial.so"]) == ""


def test_agi_app_settings_load_as_a_config_from_env_and_from_ini(tmp_path):
    settings = pc.agi_app_settings(
        PROFILE,
        ami_username="agi_app",
        ami_secret="s3cret",
        recordings_dir="/var/cache/t1/monitor",
        pbx_recordings_dir="/srv/agi_app/t1/monitor",
    )
    ini = tmp_path / "sandbox.ini"
    ini.write_text(pc.settings_ini(settings))
    for config in (load(None, environ=settings), load(ini, environ={})):
        assert (config.ami.host, config.ami.port) == ("127.0.0.1", PROFILE.ami_port)
        assert (config.ami.username, config.ami.secret) == ("agi_app", "s3cret")
        assert config.agi.listen == f"tcp:{PROFILE.agi_port}:interface=127.0.0.1"
        assert config.dialing.default_trunk == pc.TRUNK
        assert config.dialing.pbx_recordings_dir == "/srv/agi_app/t1/monitor"


def test_settings_ini_groups_keys_by_section_and_refuses_other_names():
    text = pc.settings_ini(
        {"AGI_APP_AMI_PORT": "1", "AGI_APP_HTTP_LISTEN": "x", "AGI_APP_AMI_HOST": "h"}
    )
    assert text == "[ami]\nport = 1\nhost = h\n\n[http]\nlisten = x\n\n"
    with pytest.raises(ValueError, match="AGI_APP_<SECTION>_<KEY>"):
        pc.settings_ini({"AMI_PORT": "1"})


def test_the_profiles_keep_operators_and_pstn_apart():
    for profile in (*pc.PROFILES.values(), PROFILE):
        sip = [profile.operator_port(n) for n in pc.OPERATORS]
        register = [profile.register_port(n) for n in pc.OPERATORS]
        assert len({*sip, *register, profile.pstn_port, profile.sip_port}) == 2 * len(sip) + 2
        media = [profile.operator_media_port(n) for n in pc.OPERATORS] + [profile.pstn_media_port]
        assert all(b - a == 10 for a, b in pairwise(media))
