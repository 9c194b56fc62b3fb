"""What a sandbox Asterisk instance is configured as, rendered to text.

The port plan of an instance (:class:`Profile`), the operators and the
trunk every sandbox has, the Asterisk configuration files rendered from
``templates/`` the way an admin would set up a PBX for agi_app
(CONTRACT 1.2), and the agi_app settings that talk to it.

Nothing here touches the chroot or starts a process:
:class:`agi_app.sandbox.pbx.PBX` finds what it needs in the tree (the module
folder and its modules), writes what is rendered here and runs Asterisk.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources

from agi_app.sandbox import _util

__all__ = [
    "AMI_READ",
    "FAULTS",
    "OPERATORS",
    "PROFILES",
    "STOCK_CONFIGS",
    "TRUNK",
    "Profile",
    "agi_app_settings",
    "asterisk_configs",
    "noload_lines",
    "operator_endpoints",
    "settings_ini",
]

#: the operator extensions every sandbox has (PJSIP endpoints that REGISTER)
OPERATORS = tuple(str(n) for n in range(1000, 1010))
#: the PJSIP endpoint of the simulated public network
TRUNK = "pstn"
#: module name prefixes never loaded: they bind fixed ports, reach outside
#: services or only slow the boot down
_NOLOAD_PREFIXES = (
    "app_adsiprog", "app_alarmreceiver", "app_audiosocket", "app_directory", "app_festival",
    "app_followme", "app_getcpeid", "app_jack", "app_minivm", "app_mp3", "app_sms",
    "app_stasis", "app_voicemail", "cdr_", "cel_", "chan_audiosocket", "chan_console",
    "chan_dahdi", "chan_iax2", "chan_mobile", "chan_motif", "chan_ooh323", "chan_rtp",
    "chan_unistim", "chan_websocket", "func_curl", "func_odbc", "func_realtime", "pbx_ael",
    "pbx_dundi", "pbx_lua", "pbx_realtime", "res_adsi", "res_aeap", "res_ari",
    "res_audiosocket", "res_calendar", "res_clialiases", "res_config_", "res_corosync",
    "res_curl", "res_fax", "res_geolocation", "res_hep", "res_http_media_cache",
    "res_http_post", "res_http_websocket", "res_odbc", "res_pgsql", "res_phoneprov",
    "res_pjsip_geolocation", "res_pjsip_phoneprov", "res_pjsip_send_to_voicemail",
    "res_pjsip_stir_shaken", "res_pjsip_transport_websocket", "res_prometheus", "res_realtime",
    "res_resolver_unbound", "res_rtp_multicast", "res_security_log", "res_smdi", "res_snmp",
    "res_sorcery_realtime", "res_speech_aeap", "res_stasis", "res_statsd", "res_stir_shaken",
    "res_stun_monitor", "res_websocket_client", "res_xmpp",
)  # fmt: skip
#: read classes of the sandbox's AMI user (manager.conf ``read``): ``readme``
#: is what the README tells an admin to grant, ``all`` every class (a PBX
#: set up more generously; agi_app must cope with both)
AMI_READ = {"readme": "system,call,agent,user,dtmf,reporting", "all": "all"}
#: Debian's own files, used as they are (tones, answering machine detection...)
STOCK_CONFIGS = ("indications.conf", "amd.conf", "pjsip_notify.conf")
#: what an instance can be misconfigured in on purpose (``agi-app doctor``'s
#: tests): the setting left out or wrong -> what it breaks
FAULTS = {
    "channelvars": "manager.conf has no channelvars = AGI_APP_CALL_ID",
    "dialplan": "extensions.conf does not #include the project's dialplan",
    "prompts": "Asterisk's data folder is one whose sounds folder is empty",
    "ami_classes": "the AMI user may read only call events and send no Originate",
}
#: the instance's data folder under the fault ``prompts``: links to the
#: tree's /usr/share/asterisk but an empty sounds folder
NO_PROMPTS_DATA_DIR = "data-without-prompts"


@dataclass(frozen=True)
class Profile:
    """The ports of one sandbox instance.

    Operator ``1000+i`` listens for SIP on ``phone_port + i``; its SIPp
    process gets media ports from ``media_port + 10*i``; the PSTN SIPp uses
    ``pstn_port`` and the media block after the operators'.
    """

    name: str
    ami_port: int
    sip_port: int
    agi_port: int
    phone_port: int
    pstn_port: int
    rtp_start: int
    rtp_end: int
    media_port: int

    def operator_port(self, number: str) -> int:
        """SIP port of an operator phone's SIPp (UAS) process."""
        return self.phone_port + OPERATORS.index(number)

    def register_port(self, number: str) -> int:
        """SIP port the operator's REGISTER is sent from."""
        return self.phone_port + 100 + OPERATORS.index(number)

    def operator_media_port(self, number: str) -> int:
        """First of the media ports reserved for an operator phone."""
        return self.media_port + 10 * OPERATORS.index(number)

    @property
    def pstn_media_port(self) -> int:
        """First of the media ports reserved for the PSTN SIPp."""
        return self.media_port + 10 * len(OPERATORS)


#: ``run`` is what ``make run`` uses (the application's default ports);
#: ``test`` is a distinct range so a test session never collides with it.
PROFILES = {
    "run": Profile("run", 5038, 5060, 4573, 5071, 5090, 10000, 10999, 16000),
    "test": Profile("test", 25038, 25060, 24573, 25071, 25090, 30000, 30999, 26000),
}


# ------------------------------------------------------------ Asterisk


def noload_lines(modules: Iterable[str]) -> str:
    """``noload =>`` lines (modules.conf) for the installed ``modules``
    (file names such as ``chan_iax2.so``) that the sandbox never loads."""
    return "\n".join(f"noload => {n}" for n in sorted(modules) if n.startswith(_NOLOAD_PREFIXES))


def operator_endpoints(operators: Iterable[str] = OPERATORS) -> str:
    """The pjsip.conf endpoint and aor sections of the operators, made from
    the ``operator`` and ``operator-aor`` templates in pjsip.conf."""
    return "\n".join(
        f"[{n}](operator)\naors = {n}\ncallerid = Operator {n} <{n}>\n\n[{n}](operator-aor)\n"
        for n in operators
    )


def asterisk_configs(
    profile: Profile,
    *,
    name: str,
    pbx_dir: str,
    module_dir: str,
    modules: Iterable[str],
    ami_username: str,
    ami_secret: str,
    ami_read: str = AMI_READ["readme"],
    faults: Iterable[str] = (),
    agi_url: str | None = None,
) -> dict[str, str]:
    """Every configuration file of an instance, ``{file name: text}``:
    the templates filled in with ``profile``'s ports, the instance's
    ``name`` and folder ``pbx_dir`` (as Asterisk sees it), the AMI user
    (``ami_read``: its read classes, see :data:`AMI_READ`) and the
    chroot's ``module_dir`` with ``modules`` (the ``.so`` files in it).
    ``faults`` (names of :data:`FAULTS`) break the setup on purpose.
    ``agi_url`` is the dialplan's ``AGI_APP_URL`` (default
    ``agi://127.0.0.1:<agi_port>``; ``hagi://NAME`` for SRV failover)."""
    if not re.fullmatch(r"[a-z]+(,[a-z]+)*", ami_read):
        raise ValueError(f"AMI read classes must be a comma-separated list: {ami_read!r}")
    agi_url = agi_url or f"agi://127.0.0.1:{profile.agi_port}"
    if not re.fullmatch(r"h?agi://[A-Za-z0-9.:_-]+", agi_url):
        raise ValueError(f"AGI_APP_URL must be agi://HOST[:PORT] or hagi://NAME: {agi_url!r}")
    faults = frozenset(faults)
    if faults - set(FAULTS):
        raise ValueError(f"unknown faults {sorted(faults - set(FAULTS))} (known: {list(FAULTS)})")

    def unless(fault: str, good: str, broken: str) -> str:
        return broken if fault in faults else good

    values = {
        "name": name,
        "pbx_dir": pbx_dir,
        "module_dir": module_dir,
        "noload": noload_lines(modules),
        "ami_port": profile.ami_port,
        "ami_username": ami_username,
        "ami_secret": ami_secret,
        "sip_port": profile.sip_port,
        "agi_port": profile.agi_port,
        "agi_url": agi_url,
        "pstn_port": profile.pstn_port,
        "rtp_start": profile.rtp_start,
        "rtp_end": profile.rtp_end,
        "operators": operator_endpoints(),
        "channelvars": unless("channelvars", "channelvars = AGI_APP_CALL_ID",
                              "; channelvars left out on purpose (fault channelvars)"),
        "dialplan_include": unless("dialplan", '#include "dialplan/extensions.conf"',
                                   "; the project's dialplan left out on purpose (fault dialplan)"),
        "data_dir": unless("prompts", "/usr/share/asterisk", f"{pbx_dir}/{NO_PROMPTS_DATA_DIR}"),
        "ami_read": unless("ami_classes", ami_read, "call"),
        "ami_write": unless("ami_classes", "call,originate,reporting,agent", "call,reporting"),
    }  # fmt: skip
    templates = resources.files("agi_app.sandbox") / "templates"
    return {
        item.name: _util.render(item.read_text(encoding="utf-8"), values)
        for item in sorted(templates.iterdir(), key=lambda t: t.name)
        if item.name.endswith(".conf")
    }


# ------------------------------------------------------------ agi_app


def agi_app_settings(
    profile: Profile,
    *,
    ami_username: str,
    ami_secret: str,
    recordings_dir: str,
    pbx_recordings_dir: str,
) -> dict[str, str]:
    """``AGI_APP_<SECTION>_<KEY>`` settings for an agi_app talking to the
    instance of ``profile``; ``recordings_dir`` is its recordings folder as
    the host sees it, ``pbx_recordings_dir`` as Asterisk sees it."""
    return {
        "AGI_APP_AMI_HOST": "127.0.0.1",
        "AGI_APP_AMI_PORT": str(profile.ami_port),
        "AGI_APP_AMI_USERNAME": ami_username,
        "AGI_APP_AMI_SECRET": ami_secret,
        "AGI_APP_AGI_LISTEN": f"tcp:{profile.agi_port}:interface=127.0.0.1",
        "AGI_APP_DIALING_OPERATOR_CHANNEL": "PJSIP/{sip}",
        "AGI_APP_DIALING_CLIENT_CHANNEL": "PJSIP/{phone}@{trunk}",
        "AGI_APP_DIALING_DEFAULT_TRUNK": TRUNK,
        "AGI_APP_DIALING_RECORDINGS_DIR": recordings_dir,
        "AGI_APP_DIALING_PBX_RECORDINGS_DIR": pbx_recordings_dir,
        # Everything here runs on this host: webhook receivers on loopback
        # are the norm (agi_app's own ports stay refused).
        "AGI_APP_EVENTS_ALLOWED_NETWORKS": "127.0.0.0/8",
    }


def settings_ini(settings: Mapping[str, str]) -> str:
    """``AGI_APP_<SECTION>_<KEY>`` settings as an INI text (for
    ``agi-app serve --config``), sections in the order they first appear."""
    sections: dict[str, list[str]] = {}
    for key, value in settings.items():
        if not key.startswith("AGI_APP_") or "_" not in key[len("AGI_APP_") :]:
            raise ValueError(f"not an AGI_APP_<SECTION>_<KEY> name: {key!r}")
        section, _, name = key[len("AGI_APP_") :].partition("_")
        sections.setdefault(section.lower(), []).append(f"{name.lower()} = {value}")
    return "".join(f"[{s}]\n" + "\n".join(lines) + "\n\n" for s, lines in sections.items())
