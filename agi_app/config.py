"""Configuration: an INI file (CONTRACT section 1) plus ``AGI_APP_<SECTION>_<KEY>``
environment overrides.

Every key has a default, so an empty file is a valid configuration.  Each
section is one small frozen dataclass; :func:`load` reads, overrides and
validates, and every validation error names the offending ``[section] key``.
"""

from __future__ import annotations

import configparser
import inspect
import ipaddress
import math
import os
import re
import socket
import string
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit

from twisted.internet import endpoints
from twisted.logger import Logger

from agi_app.hours import WorkingHours
from agi_app.netguard import parse_networks
from agi_app.validation import EXTENSION, PBX_NAME

__all__ = [
    "AMIConfig",
    "AGIConfig",
    "CRMConfig",
    "Config",
    "ConfigError",
    "DEFAULT_PBX",
    "FILE_PATHS",
    "DialingConfig",
    "EventsConfig",
    "HTTPConfig",
    "IVRConfig",
    "InboundConfig",
    "LogConfig",
    "MetricsConfig",
    "RetentionConfig",
    "StoreConfig",
    "WebSocketConfig",
    "load",
    "is_loopback_endpoint",
    "is_loopback_host",
    "is_loopback_listen",
    "listen_interface",
    "sip_headers",
    "web_origin",
]


log = Logger(namespace="agi_app.config")


class ConfigError(ValueError):
    """A configuration value is missing or wrong; the message names the key."""


@dataclass(frozen=True)
class AMIConfig:
    """``[ami]``: where the Asterisk Manager Interface is and how to log in."""

    host: str = "127.0.0.1"
    port: int = 5038
    username: str = "agi_app"
    secret: str = "change-me"
    #: seconds between keep-alive pings
    ping_interval: float = 20.0
    #: seconds an action may wait for its response
    action_timeout: float = 10.0
    #: reconnect backoff cap in seconds
    max_backoff: float = 30.0
    #: extensions known to be on this PBX (exact names, or a prefix ending in
    #: ``*``): where a call to one goes while no PBX has reported its device
    #: (see docs/scaling.md, "Several PBXs")
    extensions: tuple[str, ...] = ()
    #: this PBX's recordings as agi_app sees them, and as Asterisk writes
    #: them; empty: ``[dialing] recordings_dir`` and ``pbx_recordings_dir``
    recordings_dir: str = ""
    pbx_recordings_dir: str = ""

    def has_extension(self, extension: str) -> bool:
        """Whether ``extensions`` names ``extension`` (or a prefix of it)."""
        return any(
            extension.startswith(item[:-1]) if item.endswith("*") else extension == item
            for item in self.extensions
        )


@dataclass(frozen=True)
class AGIConfig:
    """``[agi]``: the FastAGI listener."""

    listen: str = "tcp:4573:interface=127.0.0.1"
    #: seconds one AGI command may wait for its reply
    command_timeout: float = 30.0
    #: networks (CIDRs) FastAGI connections may come from; others are closed at once
    allowed_peers: tuple[str, ...] = ("127.0.0.0/8", "::1/128")


@dataclass(frozen=True)
class HTTPConfig:
    """``[http]``: the CRM API and static files."""

    listen: str = "tcp:8080:interface=127.0.0.1"
    public_url: str = "http://127.0.0.1:8080"
    api_keys: tuple[str, ...] = ()
    #: seconds a signed recording link (``RecordURL`` of the ``record`` event,
    #: ``signed=1`` of recordList/orderRecords) works without an API key
    record_link_ttl: int = 3600
    #: the key of signed recording links; empty: derived from the first of
    #: ``api_keys`` (or, without keys, random at each start)
    link_secret: str = ""


#: ``[http] link_secret``: at least this many characters
MIN_LINK_SECRET = 16
#: ``[http] record_link_ttl``: 1 s .. 7 days
MAX_RECORD_LINK_TTL = 7 * 86400


@dataclass(frozen=True)
class WebSocketConfig:
    """``[websocket]``: the browser widget feed (see docs/widget.md)."""

    listen: str = "tcp:10150:interface=127.0.0.1"
    #: static widget passwords; accepted only while ``listen`` is loopback
    client_ids: tuple[str, ...] = ("password",)
    #: the shared secret of widget tokens; empty: no token is accepted
    token_secret: str = ""
    #: origins of the pages that may connect; empty: the origin of
    #: ``[http] public_url`` (and, on a loopback listener, pages served from
    #: loopback); ``*``: any page
    allowed_origins: tuple[str, ...] = ()


#: ``[websocket] token_secret``: a shorter one could be found from a single
#: token by trying every secret
MIN_TOKEN_SECRET = 16


@dataclass(frozen=True)
class StoreConfig:
    """``[store]``: the call log database."""

    #: the SQLite file (used while ``url`` is empty)
    path: str = "var/agi_app.sqlite3"
    #: ``postgresql://user:pass@host:port/db``: the store in that PostgreSQL
    #: database instead (see docs/scaling.md); empty: SQLite at ``path``
    url: str = ""
    #: the API's history reads run on the reactor thread within this budget
    #: (microseconds) and move to the store's worker thread past it; 0: all
    #: reads on the worker thread
    read_budget_us: int = 2000


#: what Snom, Yealink, Grandstream, Polycom and most other desk and soft
#: phones take as "answer this call at once" (``{pbx}``: ``[ami] host``)
DEFAULT_AUTO_ANSWER_HEADERS = (
    "Call-Info: <sip:{pbx}>;answer-after=0",
    "Alert-Info: info=alert-autoanswer",
)
#: at most this many auto-answer headers
MAX_SIP_HEADERS = 8
#: headers that carry the SIP dialog itself: Asterisk writes them, a
#: configured one would break the call
RESERVED_SIP_HEADERS = frozenset({
    "via", "from", "to", "call-id", "cseq", "contact", "max-forwards", "content-length",
    "content-type", "content-encoding", "route", "record-route", "authorization",
    "proxy-authorization", "www-authenticate", "proxy-authenticate", "require",
    "proxy-require", "supported", "allow", "session-expires", "min-se", "rack", "rseq",
})  # fmt: skip
# A header name: letters, digits and hyphens (what Asterisk's function
# argument and the AMI Variable name allow); two characters or more, so no
# compact form (v, f, t...) of a reserved header slips through.
_SIP_HEADER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,63}$", re.ASCII)
# A value: printable ASCII without the characters AMI's Variable header
# treats specially (a comma starts another variable; quotes and backslashes
# are dropped).
_SIP_HEADER_VALUE = re.compile(r'^[\x20-\x7e]{1,255}$', re.ASCII)
_SIP_VALUE_UNSAFE = (",", '"', "\\")


def sip_headers(items: tuple[str, ...], *, pbx: str) -> tuple[tuple[str, str], ...]:
    """SIP headers written ``Name: value``, checked, as ``(name, value)``
    pairs.  ``{pbx}`` in a value becomes ``pbx`` (no other placeholder).

    Every rule keeps the header a header: a name of letters, digits and
    hyphens that is not one of :data:`RESERVED_SIP_HEADERS`; a value of
    printable ASCII (no CR, LF or other control character) without commas,
    quotes or backslashes; each name once; at most :data:`MAX_SIP_HEADERS`.  ValueError says
    which item breaks which rule.
    """
    if len(items) > MAX_SIP_HEADERS:
        raise ValueError(f"at most {MAX_SIP_HEADERS} headers")
    out = []
    for item in items:
        name, sep, template = item.partition(":")
        name, template = name.strip(), template.strip()
        if not sep or not _SIP_HEADER_NAME.match(name):
            raise ValueError(
                f"{item!r}: write a header as Name: value (the name of letters, digits and -)"
            )
        if name.lower() in RESERVED_SIP_HEADERS:
            raise ValueError(f"{item!r}: {name} belongs to the SIP dialog, Asterisk writes it")
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
            if fields - {"pbx"}:
                raise ValueError
            value = template.format(pbx=pbx)
        except (ValueError, IndexError, KeyError):
            raise ValueError(
                f"{item!r}: the only placeholder is {{pbx}} (write {{{{ and }}}} for braces)"
            ) from None
        if not _SIP_HEADER_VALUE.match(value) or any(c in value for c in _SIP_VALUE_UNSAFE):
            raise ValueError(
                f"{item!r}: the value must be 1 to 255 printable ASCII characters without "
                "commas, quotes or backslashes"
            )
        if any(name.lower() == seen.lower() for seen, _ in out):
            raise ValueError(f"{item!r}: {name} is given twice")
        out.append((name, value))
    return tuple(out)


@dataclass(frozen=True)
class DialingConfig:
    """``[dialing]``: how operators and clients are dialled and where recordings go."""

    operator_channel: str = "PJSIP/{sip}"
    client_channel: str = "PJSIP/{phone}@{trunk}"
    default_trunk: str = "pstn"
    call_time_to_ext: int = 30
    call_time_to_client: int = 40
    recordings_dir: str = "/var/spool/asterisk/monitor"
    pbx_recordings_dir: str = ""
    #: dialplan context the operator leg is originated into (dialplan/extensions.conf)
    context: str = "agi-app-operator"
    #: every trunk endpoint besides default_trunk (not operators); the API's
    #: ``trunk``/``trunkNumber`` may name default_trunk or one of these
    trunks: tuple[str, ...] = ()
    #: ring the operator's phone with :attr:`auto_answer_headers` unless a
    #: request says otherwise (makeCall ``auto_answer``, extToPhone ``autoAnswer``)
    operator_auto_answer: bool = False
    #: the SIP headers of an auto-answered operator leg, ``Name: value`` items
    #: (comma separated in the file); ``{pbx}`` is ``[ami] host``
    auto_answer_headers: tuple[str, ...] = DEFAULT_AUTO_ANSWER_HEADERS

    @property
    def all_trunks(self) -> tuple[str, ...]:
        """``default_trunk`` and ``trunks``, without repeats."""
        return tuple(dict.fromkeys((self.default_trunk, *self.trunks)))

    @property
    def pbx_recordings(self) -> str:
        """The recordings folder as Asterisk sees it."""
        return self.pbx_recordings_dir or self.recordings_dir

    def auto_answer(self, pbx: str) -> tuple[tuple[str, str], ...]:
        """:attr:`auto_answer_headers` as ``(name, value)`` pairs, ``{pbx}``
        replaced by ``pbx`` (``[ami] host``); ValueError when one breaks the
        rules of :func:`sip_headers`."""
        return sip_headers(self.auto_answer_headers, pbx=pbx)


@dataclass(frozen=True)
class IVRConfig:
    """``[ivr]``: where the IVR menus are defined (see ivr.conf.example)."""

    path: str = "ivr.conf"


@dataclass(frozen=True)
class InboundConfig:
    """``[inbound]``: calls from the trunks -- who answers them, missed calls
    and calling the callers back (docs/features.md)."""

    #: the extensions that answer inbound calls: rung together when the CRM
    #: names no operator or one who is not free (``[agi-app-inbound]``), they
    #: get the ``missed`` webhook of every missed call, and callbacks ring them
    group: tuple[str, ...] = ()
    #: call missed callers back through the operator-first flow, within the
    #: working hours, once a member of ``group`` is free
    auto_callback: bool = False
    #: working hours of callbacks: ``HH:MM-HH:MM`` ranges
    hours: tuple[str, ...] = ("09:00-18:00",)
    #: working days of callbacks: ``mon`` .. ``sun`` and ranges (``mon-fri``)
    days: tuple[str, ...] = ("mon-fri",)
    #: the time zone of ``hours`` and ``days`` (``Europe/Kyiv``); empty: this
    #: machine's local time
    timezone: str = ""
    #: callbacks placed to one caller at most (until someone gets through)
    callback_attempts: int = 3
    #: seconds between two callbacks to the same caller
    callback_retry_delay: int = 600
    #: missed calls older than this (seconds) are not called back (they stay listed)
    callback_max_age: int = 259200

    @property
    def working_hours(self) -> WorkingHours:
        """``hours``, ``days`` and ``timezone`` (checked at load)."""
        return WorkingHours.parse(self.hours, self.days, self.timezone)


@dataclass(frozen=True)
class EventsConfig:
    """``[events]``: delivery of webhooks to CRMs (see docs/events.md)."""

    #: seconds before the first retry of a failed delivery; doubles each time
    retry_delay: float = 1.0
    #: the longest pause between retries, seconds
    max_retry_delay: float = 300.0
    #: an event still undelivered this many seconds after it happened is given up
    give_up_after: float = 86400.0
    #: seconds one delivery request may take
    timeout: float = 10.0
    #: networks (CIDRs) webhook targets may resolve to besides public addresses
    allowed_networks: tuple[str, ...] = ()


@dataclass(frozen=True)
class CRMConfig:
    """``[crm]``: asking the CRM who is calling (see docs/features.md)."""

    #: the CRM's lookup URL with ``{phone}`` where the caller's number goes
    #: (URL-quoted); empty: no lookup
    lookup_url: str = ""
    #: seconds a lookup may take; then the call goes on without it
    lookup_timeout: float = 1.5
    #: seconds an answer is kept for the next call of the same number; 0: none
    lookup_cache_seconds: int = 60
    #: numbers whose answers are kept at most
    lookup_cache_size: int = 1000
    #: one header sent with every lookup, ``Name: value`` (e.g. ``Authorization: Bearer ...``)
    lookup_header: str = ""
    #: networks (CIDRs) the lookup URL may resolve to besides public
    #: addresses and ``[events] allowed_networks``
    allowed_networks: tuple[str, ...] = ()

    @property
    def header(self) -> tuple[str, str] | None:
        """``lookup_header`` as ``(name, value)``, or None."""
        if not self.lookup_header:
            return None
        name, _, value = self.lookup_header.partition(":")
        return name.strip(), value.strip()


@dataclass(frozen=True)
class MetricsConfig:
    """``[metrics]``: ``GET /metrics`` for Prometheus (docs/operations.md)."""

    #: scraped without an API key (the other routes still need theirs)
    open: bool = False


#: ``[log] level`` values, quietest last (Twisted's level names)
LOG_LEVELS = ("debug", "info", "warn", "error", "critical")
#: ``[log] format`` values
LOG_FORMATS = ("text", "json")


@dataclass(frozen=True)
class LogConfig:
    """``[log]``: the service's log on standard output (docs/operations.md).
    ``AGI_APP_LOG_LEVEL`` overrides ``level`` like every other key."""

    #: the lowest level written
    level: str = "info"
    #: ``text``: Twisted's classic lines; ``json``: one JSON object per line
    format: str = "text"


@dataclass(frozen=True)
class RetentionConfig:
    """``[retention]``: how long the call log and the recordings are kept
    (see docs/operations.md, "Retention and erasure")."""

    #: days calls and their history (and their recordings) are kept; 0: for ever
    history_days: int = 0
    #: days recording files (and their rows) are kept; 0: for ever
    recordings_days: int = 0
    #: seconds between two purges (the first runs at start)
    interval: int = 3600
    #: calls (or recordings) deleted per store transaction
    batch_size: int = 100


@dataclass(frozen=True)
class NodeConfig:
    """``[node]``: this process among several sharing one PostgreSQL store
    (docs/scaling.md, "Several nodes")."""

    #: the node's name in logs, ``GET /health`` and the database's
    #: ``application_name``; empty: the host name
    name: str = ""

    @property
    def effective_name(self) -> str:
        """``name``, or the host name when it is empty."""
        return self.name or socket.gethostname()


#: ``[node] name``: letters, digits and ``.-_``, as a host name
_NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$", re.ASCII)

#: ``[retention] history_days`` / ``recordings_days``: at most 100 years
MAX_RETENTION_DAYS = 36500


@dataclass(frozen=True)
class Config:
    """The whole configuration, one attribute per INI section."""

    ami: AMIConfig = field(default_factory=AMIConfig)
    agi: AGIConfig = field(default_factory=AGIConfig)
    http: HTTPConfig = field(default_factory=HTTPConfig)
    websocket: WebSocketConfig = field(default_factory=WebSocketConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    dialing: DialingConfig = field(default_factory=DialingConfig)
    ivr: IVRConfig = field(default_factory=IVRConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    crm: CRMConfig = field(default_factory=CRMConfig)
    inbound: InboundConfig = field(default_factory=InboundConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    node: NodeConfig = field(default_factory=NodeConfig)
    #: the further PBXs, ``[ami:NAME]`` sections in the order of the file,
    #: as ``(NAME, AMIConfig)``
    more_pbxs: tuple[tuple[str, AMIConfig], ...] = ()
    #: the file this was read from, if any (relative paths written in it are
    #: taken from its folder: :data:`FILE_PATHS`)
    source: str | None = None
    #: the relative paths that were found only in the working directory, the
    #: way before 0.2.0 (``[section] key``, path used); the service logs a warning
    legacy_paths: tuple[tuple[str, str], ...] = ()

    @property
    def pbxs(self) -> dict[str, AMIConfig]:
        """Every PBX by name, ``[ami]`` (:data:`DEFAULT_PBX`) first."""
        return {DEFAULT_PBX: self.ami, **dict(self.more_pbxs)}


#: the name of the PBX of ``[ami]``; ``[ami:NAME]`` sections add others
DEFAULT_PBX = "default"
#: the section of a further PBX: ``[ami:NAME]``
_PBX_SECTION = "ami:"

_SECTIONS = {
    "ami": AMIConfig,
    "agi": AGIConfig,
    "http": HTTPConfig,
    "websocket": WebSocketConfig,
    "store": StoreConfig,
    "dialing": DialingConfig,
    "ivr": IVRConfig,
    "events": EventsConfig,
    "crm": CRMConfig,
    "inbound": InboundConfig,
    "metrics": MetricsConfig,
    "log": LogConfig,
    "retention": RetentionConfig,
    "node": NodeConfig,
}

def _unsafe_char(c: str) -> bool:
    # Tab is fine; every other control character and the Unicode line and
    # paragraph separators are not (they would break a line on the wire).
    return c != "\t" and unicodedata.category(c) in ("Cc", "Zl", "Zp")


def _convert(section: str, key: str, raw: str, default: object) -> object:
    where = f"[{section}] {key}"
    if any(_unsafe_char(c) for c in raw):
        raise ConfigError(f"{where}: control characters are not allowed")
    if isinstance(default, bool):
        low = raw.strip().lower()
        if low in ("1", "yes", "true", "on"):
            return True
        if low in ("0", "no", "false", "off"):
            return False
        raise ConfigError(f"{where}: expected yes/no, got {raw!r}")
    if isinstance(default, int):
        if not re.fullmatch(r"-?[0-9]+", raw.strip(), re.ASCII):
            raise ConfigError(f"{where}: expected a whole number, got {raw!r}")
        value = int(raw.strip())
        if value < 0:
            raise ConfigError(f"{where}: must not be negative")
        return value
    if isinstance(default, float):
        try:
            value = float(raw.strip())
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {raw!r}") from None
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{where}: must be positive")
        return value
    if isinstance(default, tuple):
        return tuple(p.strip() for p in raw.split(",") if p.strip())
    return raw.strip()


#: The keys holding a file or folder of this machine.  A relative path
#: written in the configuration file is taken from the file's folder; one
#: from the environment or a default, from the working directory.
#: (``[dialing] pbx_recordings_dir`` is the PBX's view: never resolved.)
FILE_PATHS = (
    ("store", "path"), ("ivr", "path"), ("dialing", "recordings_dir"), ("ami", "recordings_dir"),
)  # fmt: skip


def _beside(folder: Path, section: str, key: str, value: str,
            legacy: list[tuple[str, str]]) -> str:
    """``value`` (written in the file in ``folder``) as a path beside the file.

    Before 0.2.0 such a path was taken from the working directory: when it
    exists there and not beside the file, that one is kept (and reported in
    ``legacy``) so that an upgrade finds its store and menus again."""
    if not value or os.path.isabs(value) or folder.resolve() == Path.cwd().resolve():
        return value  # (from the file's own folder both readings are one file)
    beside = folder / value
    if not beside.exists() and (Path.cwd() / value).exists():
        kept = str(Path.cwd() / value)
        legacy.append((f"[{section}] {key}", kept))
        return kept
    return str(beside)


def load(path: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (may be ``None``: defaults only), apply environment overrides,
    validate, and return a :class:`Config`.  Raises :class:`ConfigError`.

    A relative path in the file (:data:`FILE_PATHS`) becomes the path beside
    the file (see :func:`_beside` for the compatibility rule)."""
    environ = os.environ if environ is None else environ
    parser = configparser.ConfigParser(
        inline_comment_prefixes=(";", "#"), interpolation=None, strict=True
    )
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"configuration file not found: {p}")
        try:
            parser.read(p, encoding="utf-8")
        except (configparser.Error, UnicodeDecodeError) as e:
            raise ConfigError(f"{p}: {e}") from None
    more_pbxs = []
    for section in parser.sections():
        if section.startswith(_PBX_SECTION):
            more_pbxs.append((_pbx_name(section), section))
        elif section not in _SECTIONS:
            raise ConfigError(
                f"unknown section [{section}] (known: {', '.join(_SECTIONS)}, ami:NAME)"
            )
    legacy: list[tuple[str, str]] = []
    folder = Path(path).parent if path is not None else None
    built = {
        name: _read_section(parser, name, cls, environ, folder, legacy)
        for name, cls in _SECTIONS.items()
    }
    # A further PBX has [ami]'s keys; the AGI_APP_AMI_* overrides are [ami]'s only.
    pbxs = tuple(
        (n, _read_section(parser, section, AMIConfig, {}, folder, legacy))
        for n, section in more_pbxs
    )
    cfg = Config(**built, more_pbxs=pbxs, source=str(path) if path is not None else None,
                 legacy_paths=tuple(legacy))  # fmt: skip
    _validate(cfg)
    for where, kept in legacy:
        log.warn("{where}: a relative path is now taken from the configuration file's "
                 "folder; kept {kept} (found in the working directory only): write the "
                 "absolute path", where=where, kept=kept)
    return cfg


def _pbx_name(section: str) -> str:
    """NAME of an ``[ami:NAME]`` section, checked."""
    name = section[len(_PBX_SECTION):]
    if name == DEFAULT_PBX:
        raise ConfigError(f"[{section}]: {DEFAULT_PBX!r} is the PBX of [ami]; name this one "
                          "otherwise")  # fmt: skip
    if not PBX_NAME.match(name):
        raise ConfigError(f"[{section}]: a PBX's name must be {PBX_NAME.says}")
    return name


def _read_section(
    parser: configparser.ConfigParser,
    section: str,
    cls: type,
    environ: Mapping[str, str],
    folder: Path | None = None,
    legacy: list[tuple[str, str]] | None = None,
) -> object:
    """Section ``section`` of the file as ``cls``, with ``AGI_APP_<SECTION>_<KEY>``
    overrides from ``environ``; a relative path of :data:`FILE_PATHS` written
    in the file in ``folder`` is taken beside it (:func:`_beside`)."""
    kind = section.split(":", 1)[0]  # [ami:NAME] has [ami]'s keys
    values = {}
    known = {f.name: f for f in fields(cls)}
    if parser.has_section(section):
        for key in parser[section]:
            if key not in known:
                raise ConfigError(f"[{section}] {key}: unknown key")
    for key, f in known.items():
        default = f.default if f.default is not f.default_factory else f.default_factory()
        raw = None
        if parser.has_option(section, key):
            raw = parser.get(section, key)
        env_name = f"AGI_APP_{section.upper()}_{key.upper()}"
        if env_name in environ:
            raw = environ[env_name]
        if raw is not None:
            values[key] = _convert(section, key, raw, default)
            if (kind, key) in FILE_PATHS and folder is not None and env_name not in environ:
                values[key] = _beside(folder, section, key, values[key],
                                      legacy if legacy is not None else [])  # fmt: skip
    return cls(**values)


# Twisted's own parser of each kind of server endpoint string; binding an
# endpoint's arguments to it tells where its interface is, as Twisted reads it.
_SERVER_PARSERS = {
    "tcp": endpoints._parseTCP,
    "ssl": endpoints._parseSSL,
    "tcp6": endpoints._TCP6ServerParser()._parseServer,
}


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and the loopback addresses (127.0.0.0/8, ::1),
    written as they are (no name is resolved)."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen_interface(description: str) -> str | None:
    """The address a Twisted server endpoint string listens on, as Twisted
    reads it: ``tcp:8080:interface=127.0.0.1`` -> ``"127.0.0.1"``.

    The string is split by Twisted's endpoint-string parser and its
    arguments bound to the parser of its kind (``tcp``, ``tcp6``, ``ssl``),
    so escapes (``interface=\\:\\:1``), keyword and positional arguments,
    the last of a repeated ``interface=`` and each kind's default count as
    they do when the endpoint listens: ``""`` is every IPv4 address
    (``tcp:8080``), ``"::"`` every IPv6 one; None is a UNIX socket.  Nothing
    is opened or read (not even an ``ssl:`` endpoint's key file).

    The one reading of every listen key (``[agi]``, ``[http]``,
    ``[websocket]``).  Raises :class:`ValueError` for a string Twisted would
    not listen on (unknown kind or argument).
    """
    try:
        args, kwargs = endpoints._parse(description)
    except (ValueError, IndexError):
        raise ValueError(f"not a Twisted endpoint string: {description!r}") from None
    kind = args[0].lower() if args else ""
    if kind == "unix":
        return None
    parser = _SERVER_PARSERS.get(kind)
    if parser is None:
        raise ValueError(f"not a tcp, tcp6, ssl or unix endpoint: {description!r}")
    try:
        # The first parameter is the factory (or reactor) the endpoint gets.
        bound = inspect.signature(parser).bind(None, *args[1:], **kwargs)
    except TypeError as e:
        raise ValueError(f"not a Twisted {kind} endpoint ({e}): {description!r}") from None
    bound.apply_defaults()
    interface = bound.arguments.get("interface")
    return interface if isinstance(interface, str) else ""


def is_loopback_listen(description: str) -> bool:
    """True when a Twisted server endpoint string listens on loopback only:
    a UNIX socket, or an interface (:func:`listen_interface`) that is a
    loopback address or ``localhost``.  False for every address and for a
    string Twisted would not listen on."""
    try:
        interface = listen_interface(description)
    except ValueError:
        return False
    return interface is None or (bool(interface) and is_loopback_host(interface))


#: The earlier name of :func:`is_loopback_listen`.
is_loopback_endpoint = is_loopback_listen


def web_origin(url: str, *, exact: bool = False) -> str:
    """The origin of an ``http``/``https`` URL as browsers send it in an
    ``Origin`` header: ``scheme://host[:port]``, in lower case, without the
    scheme's default port.  ``exact``: the URL must be an origin itself (no
    path, query or user).  Raises ValueError for anything else."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    port = parts.port  # ValueError when it is not a port number
    if exact and (parts.path not in ("", "/") or parts.query or parts.fragment
                  or parts.username is not None):  # fmt: skip
        raise ValueError(f"not an origin (scheme://host[:port]): {url!r}")
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == {"http": 80, "https": 443}[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def _pbx_section(name: str) -> str:
    return "ami" if name == DEFAULT_PBX else f"{_PBX_SECTION}{name}"


def _validate_pbxs(cfg: Config) -> None:
    """Every PBX: a port, a user, extensions that are extensions, and no two
    PBXs at one address (one PBX followed twice would see each call twice)."""
    seen: dict[tuple[str, int], str] = {}
    for name, ami in cfg.pbxs.items():
        where = f"[{_pbx_section(name)}]"
        if not ami.host.strip():
            raise ConfigError(f"{where} host: must not be empty")
        if not 0 < ami.port < 65536:
            raise ConfigError(f"{where} port: must be 1..65535")
        if not ami.username:
            raise ConfigError(f"{where} username: must not be empty")
        for item in ami.extensions:
            if not EXTENSION.match(item.removesuffix("*")):
                raise ConfigError(f"{where} extensions: {item!r} must match {EXTENSION.body}, "
                                  "optionally followed by *")  # fmt: skip
        address = (ami.host.strip().lower().strip("[]"), ami.port)
        if address in seen:
            raise ConfigError(
                f"{where} host, port: {ami.host}:{ami.port} is the PBX of "
                f"[{_pbx_section(seen[address])}] already"
            )
        seen[address] = name


def _validate(cfg: Config) -> None:
    _validate_pbxs(cfg)
    for sec in ("agi", "http", "websocket"):
        value = getattr(cfg, sec).listen
        if not re.match(r"^(tcp|tcp6|unix|ssl):", value):
            raise ConfigError(f"[{sec}] listen: not a Twisted endpoint string: {value!r}")
        try:
            listen_interface(value)
        except ValueError as e:
            raise ConfigError(f"[{sec}] listen: {e}") from None
    if not cfg.http.api_keys and not is_loopback_listen(cfg.http.listen):
        raise ConfigError(
            "[http] api_keys: empty while [http] listen is not loopback "
            f"({cfg.http.listen!r}); set api_keys or listen on 127.0.0.1"
        )
    if not cfg.http.public_url.startswith(("http://", "https://")):
        raise ConfigError("[http] public_url: must start with http:// or https://")
    if "{sip}" not in cfg.dialing.operator_channel:
        raise ConfigError("[dialing] operator_channel: must contain {sip}")
    if "{phone}" not in cfg.dialing.client_channel:
        raise ConfigError("[dialing] client_channel: must contain {phone}")
    # A trunk is named in dial strings and by API requests (trunk,
    # trunkNumber): the extension rule of the API's input.
    if not EXTENSION.match(cfg.dialing.default_trunk):
        raise ConfigError(f"[dialing] default_trunk: must match {EXTENSION.body}")
    for trunk in cfg.dialing.trunks:
        if not EXTENSION.match(trunk):
            raise ConfigError(f"[dialing] trunks: {trunk!r} must match {EXTENSION.body}")
    if not 1 <= cfg.dialing.call_time_to_client <= 600:
        raise ConfigError("[dialing] call_time_to_client: must be 1..600 seconds")
    if not 0 <= cfg.store.read_budget_us <= 100_000:
        raise ConfigError("[store] read_budget_us: must be 0..100000 microseconds")
    _validate_store_url(cfg.store.url)
    if not 1 <= cfg.dialing.call_time_to_ext <= 600:
        raise ConfigError("[dialing] call_time_to_ext: must be 1..600 seconds")
    for sec, key in (
        ("agi", "allowed_peers"),
        ("events", "allowed_networks"),
        ("crm", "allowed_networks"),
    ):
        try:
            parse_networks(getattr(getattr(cfg, sec), key))
        except ValueError as e:
            raise ConfigError(f"[{sec}] {key}: {e}") from None
    if not cfg.agi.allowed_peers:
        raise ConfigError(
            "[agi] allowed_peers: empty would refuse every FastAGI connection "
            "(0.0.0.0/0,::/0 allows any)"
        )
    _validate_websocket(cfg)
    _validate_crm(cfg)
    _validate_auto_answer(cfg)
    _validate_inbound(cfg)
    _validate_links(cfg)
    _validate_retention(cfg)
    if cfg.node.name and not _NODE_NAME.match(cfg.node.name):
        raise ConfigError("[node] name: 1-63 letters, digits, dots, hyphens or underscores")
    if cfg.log.level.lower() not in LOG_LEVELS:
        raise ConfigError(f"[log] level: must be one of {', '.join(LOG_LEVELS)}")
    if cfg.log.format.lower() not in LOG_FORMATS:
        raise ConfigError(f"[log] format: must be one of {', '.join(LOG_FORMATS)}")


def _validate_auto_answer(cfg: Config) -> None:
    for ami in cfg.pbxs.values():
        try:
            cfg.dialing.auto_answer(ami.host)
        except ValueError as e:
            raise ConfigError(f"[dialing] auto_answer_headers: {e}") from None
    if cfg.dialing.operator_auto_answer and not cfg.dialing.auto_answer_headers:
        raise ConfigError("[dialing] operator_auto_answer: [dialing] auto_answer_headers is empty")
    if cfg.dialing.operator_auto_answer and not cfg.dialing.operator_channel.startswith("PJSIP/"):
        # the headers are added with PJSIP_HEADER, which only PJSIP channels have
        raise ConfigError(
            "[dialing] operator_auto_answer: needs a PJSIP operator_channel (PJSIP/{sip})"
        )


def _validate_inbound(cfg: Config) -> None:
    inbound = cfg.inbound
    for sip in inbound.group:
        if not EXTENSION.match(sip):
            raise ConfigError(f"[inbound] group: {sip!r} must match {EXTENSION.body}")
    if inbound.auto_callback and not inbound.group:
        raise ConfigError("[inbound] auto_callback: needs [inbound] group (who calls back)")
    for key, values in (("hours", (inbound.hours, ("mon",), "")),
                        ("days", (("00:00-24:00",), inbound.days, "")),
                        ("timezone", (("00:00-24:00",), ("mon",), inbound.timezone))):  # fmt: skip
        try:
            WorkingHours.parse(*values)
        except ValueError as e:
            raise ConfigError(f"[inbound] {key}: {e}") from None
    if not 1 <= inbound.callback_attempts <= 20:
        raise ConfigError("[inbound] callback_attempts: must be 1..20")
    if not 10 <= inbound.callback_retry_delay <= 86400:
        raise ConfigError("[inbound] callback_retry_delay: must be 10..86400 seconds")
    if not 60 <= inbound.callback_max_age <= 30 * 86400:
        raise ConfigError("[inbound] callback_max_age: must be 60..2592000 seconds")


#: a header name (RFC 9110 token)
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", re.ASCII)
#: a header value: visible ASCII and blanks inside
_HEADER_VALUE = re.compile(r"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?", re.ASCII)
#: headers the HTTP client sets itself
_OWN_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})


def _validate_crm(cfg: Config) -> None:
    crm = cfg.crm
    if not 0 < crm.lookup_timeout <= 10:
        raise ConfigError("[crm] lookup_timeout: must be more than 0 and at most 10 seconds")
    if crm.lookup_cache_seconds > 86400:
        raise ConfigError("[crm] lookup_cache_seconds: must be 0..86400 seconds")
    if not 1 <= crm.lookup_cache_size <= 1_000_000:
        raise ConfigError("[crm] lookup_cache_size: must be 1..1000000")
    if crm.lookup_header:
        name, colon, value = crm.lookup_header.partition(":")
        if not colon or not _HEADER_NAME.fullmatch(name.strip()):
            raise ConfigError("[crm] lookup_header: must be 'Name: value' (e.g. "
                              "'Authorization: Bearer ...')")  # fmt: skip
        if name.strip().lower() in _OWN_HEADERS:
            raise ConfigError(f"[crm] lookup_header: {name.strip()} is set by agi_app itself")
        if not _HEADER_VALUE.fullmatch(value.strip()):
            raise ConfigError("[crm] lookup_header: the value must be printable ASCII")
    if not crm.lookup_url:
        return
    url = crm.lookup_url
    if "{phone}" not in url:
        raise ConfigError("[crm] lookup_url: must contain {phone} (where the caller's number goes)")
    if len(url) > 2048 or not url.isascii() or any(c.isspace() for c in url):
        raise ConfigError("[crm] lookup_url: must be an ASCII URL without blanks, at most 2048 "
                          "characters")  # fmt: skip
    try:
        netloc = urlsplit(url).netloc
        parts = urlsplit(url.replace("{phone}", "0"))
        parts.port  # noqa: B018 - ValueError when it is no port number
    except ValueError:
        netloc, parts = "", None
    if "{phone}" in netloc:
        raise ConfigError("[crm] lookup_url: {phone} belongs in the path or query, not the host")
    if parts is None:
        raise ConfigError(f"[crm] lookup_url: not a valid URL: {url!r}")
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ConfigError("[crm] lookup_url: must be an http:// or https:// URL with a host")
    if "@" in parts.netloc:
        raise ConfigError("[crm] lookup_url: no user@ (credentials go in lookup_header)")
    if parts.fragment:
        raise ConfigError("[crm] lookup_url: must not have a #fragment")


def _validate_links(cfg: Config) -> None:
    if not 1 <= cfg.http.record_link_ttl <= MAX_RECORD_LINK_TTL:
        raise ConfigError(
            f"[http] record_link_ttl: must be 1..{MAX_RECORD_LINK_TTL} seconds"
        )
    if cfg.http.link_secret and len(cfg.http.link_secret) < MIN_LINK_SECRET:
        raise ConfigError(f"[http] link_secret: at least {MIN_LINK_SECRET} characters")


def _validate_retention(cfg: Config) -> None:
    r = cfg.retention
    for key in ("history_days", "recordings_days"):
        if getattr(r, key) > MAX_RETENTION_DAYS:
            raise ConfigError(f"[retention] {key}: must be 0..{MAX_RETENTION_DAYS} days")
    if not 60 <= r.interval <= 86400:
        raise ConfigError("[retention] interval: must be 60..86400 seconds")
    if not 1 <= r.batch_size <= 10000:
        raise ConfigError("[retention] batch_size: must be 1..10000")


def _validate_store_url(url: str) -> None:
    """``[store] url``: empty, or ``postgresql://[user[:pass]@]host[:port]/db``
    (libpq's parameters may follow as a query).  Its password is never
    repeated in an error."""
    if not url:
        return
    where = "[store] url"
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("postgresql", "postgres") or not url.lower().startswith(
        f"{parts.scheme.lower()}://"
    ):
        raise ConfigError(
            f"{where}: must be postgresql://user:pass@host:port/db (or empty for SQLite at "
            "[store] path)"
        )
    try:
        port = parts.port  # ValueError when it is not a port number
    except ValueError:
        port = 0
    if port is not None and not 0 < port < 65536:
        raise ConfigError(f"{where}: the port must be a number 1..65535")
    if not parts.hostname and "host=" not in parts.query:
        raise ConfigError(f"{where}: names no host (postgresql://user:pass@host:port/db)")
    if parts.path.strip("/") == "" or "/" in parts.path.strip("/"):
        raise ConfigError(f"{where}: must name one database (postgresql://...@host:port/db)")
    if parts.fragment:
        raise ConfigError(f"{where}: a URL fragment (#...) means nothing here")


def _validate_websocket(cfg: Config) -> None:
    ws = cfg.websocket
    if not ws.client_ids and not ws.token_secret:
        raise ConfigError(
            "[websocket] client_ids: at least one is needed while [websocket] token_secret "
            "is empty (no widget could connect)"
        )
    if ws.token_secret and len(ws.token_secret) < MIN_TOKEN_SECRET:
        raise ConfigError(f"[websocket] token_secret: at least {MIN_TOKEN_SECRET} characters")
    if ws.client_ids and not is_loopback_listen(ws.listen):
        # A page's JavaScript shows its client_id to whoever loads it: off
        # loopback only a token, which binds one extension, is safe.
        raise ConfigError(
            "[websocket] client_ids: static client ids (the default is 'password') are "
            f"accepted only while [websocket] listen is loopback, not {ws.listen!r}; set "
            "client_ids = (empty) and token_secret, and give each widget a token"
        )
    if not ws.allowed_origins:
        try:
            web_origin(cfg.http.public_url)
        except ValueError:
            raise ConfigError(
                "[http] public_url: has no origin for [websocket] allowed_origins to default to"
            ) from None
    for origin in ws.allowed_origins:
        if origin == "*":
            continue
        try:
            web_origin(origin, exact=True)
        except ValueError:
            raise ConfigError(
                f"[websocket] allowed_origins: {origin!r} is not an origin "
                "(scheme://host[:port], or *)"
            ) from None
