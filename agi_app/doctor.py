"""``agi-app doctor --config FILE``: checks a running deployment the way an
admin would debug it, and says what to fix (CONTRACT section 10).

Every check is done through what agi_app itself uses -- the configuration,
an AMI session with the same user, the PBX's own dialplan, FastAGI and
MixMonitor -- and needs no AMI class beyond those of README's manager.conf
(no ``Command`` action, no ``system`` write class):

* **config**: the file loads and validates (the CLI does this one);
* **ami**: the manager port answers and the login works;
* **ami write**: ``ListCommands`` lists only the actions the user may send:
  each action agi_app sends must be among them;
* **ami read**: the events of the doctor's own calls arrive: ``FullyBooted``
  (class ``system``), ``Newchannel``/``Hangup`` (``call``) and its
  ``UserEvent`` (``user``);
* **channelvars**: the doctor marks its channels with ``AGI_APP_CALL_ID``
  (inherited, as agi_app marks every call); their events must carry it as
  ``ChanVariable`` (manager.conf ``channelvars``);
* **dialplan**: ``ShowDialPlan`` finds every ``agi-app-*`` context of the
  shipped ``dialplan/extensions.conf``, and ``AGI_APP_URL`` is set;
* **fastagi**, **prompts**, **recordings**: the doctor originates
  ``Local/<check>@agi-app-doctor`` channels: ``fastagi`` runs
  ``AGI(${AGI_APP_URL}/doctor_ping)`` (answered by the running agi_app, or,
  when none listens on ``[agi] listen``, by a listener the doctor starts
  there), ``prompt`` plays ``<lang>/agi_app/please-wait`` for every language
  of the shipped prompts, ``record`` runs MixMonitor into a file the doctor
  names in ``[dialing] pbx_recordings_dir``, which must then appear in
  ``recordings_dir``; each reports back with an ``AgiAppDoctor`` UserEvent.

One line per check, ``ok`` or ``FAIL`` with what to fix; exit status 0 when
every check passed, 1 otherwise.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet import defer, error, task
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.logger import Logger

from agi_app.agi import ScriptRegistry
from agi_app.agi import listen as agi_listen
from agi_app.ami.errors import AMIActionError, AMIAuthenticationError, AMIError
from agi_app.ami.message import AMIMessage
from agi_app.ami.protocol import AMIProtocol
from agi_app.calls.lifecycle import CALL_ID_VAR
from agi_app.config import Config, ConfigError, load
from agi_app.shipped import shipped_dir
from agi_app.sounds import SoundsError, available, default_source_dir

__all__ = [
    "CHECKS",
    "DOCTOR_CONTEXT",
    "DOCTOR_SCRIPT",
    "REQUIRED_ACTIONS",
    "Check",
    "Doctor",
    "dialplan_contexts",
    "diagnose",
    "register_scripts",
]

log = Logger(namespace="agi_app.doctor")

#: the FastAGI script the doctor's dialplan calls (registered by the application)
DOCTOR_SCRIPT = "doctor_ping"
#: the dialplan context of the doctor's checks (dialplan/extensions.conf)
DOCTOR_CONTEXT = "agi-app-doctor"
#: the UserEvent each check of that context reports with
USER_EVENT = "AgiAppDoctor"
#: every check, in the order they are printed
CHECKS = ("config", "ami", "ami write", "ami read", "channelvars", "dialplan", "fastagi",
          "prompts", "recordings")  # fmt: skip
#: the AMI actions agi_app sends -> the write class that allows each
REQUIRED_ACTIONS = {
    "Originate": "originate",
    "Hangup": "call",
    "Redirect": "call",
    "Setvar": "call",
    "Getvar": "call",
    "Bridge": "call",
    "Park": "call",
    "CoreShowChannels": "reporting",
    "DeviceStateList": "reporting",
    "ShowDialPlan": "reporting",
}
#: the read classes agi_app needs -> an event of the doctor's run that shows it
_READ_CLASSES = {"system": "FullyBooted", "call": "Newchannel", "user": "UserEvent"}
_CONTEXT_LINE = re.compile(r"^\s*\[(agi-app-[A-Za-z0-9_-]+)\]", re.MULTILINE)
#: the prompt played for each language
_PROMPT = "please-wait"


@dataclass(frozen=True)
class Check:
    """One check's outcome: ``ok``, and what was found or what to fix."""

    name: str
    ok: bool
    text: str

    def line(self) -> str:
        """``ok   ami: ...`` / ``FAIL ami: ...``."""
        return f"{'ok' if self.ok else 'FAIL':4} {self.name}: {self.text}"


def register_scripts(registry: ScriptRegistry) -> None:
    """Register ``doctor_ping``: a FastAGI script that does nothing (the
    protocol reports ``AGI_APP_RESULT=OK``), so the doctor sees Asterisk
    reach this server."""

    async def doctor_ping(agi: Any) -> None:
        return None

    registry.register(DOCTOR_SCRIPT, doctor_ping)


def dialplan_contexts(path: Path) -> list[str]:
    """The ``[agi-app-*]`` contexts a dialplan file defines, in file order."""
    text = path.read_text(encoding="utf-8", errors="replace")
    return list(dict.fromkeys(_CONTEXT_LINE.findall(text)))


def _languages(sounds: Path) -> list[str]:
    prompts = available(sounds)
    langs = prompts.get(_PROMPT) or {lang for by_lang in prompts.values() for lang in by_lang}
    return sorted(langs)


@dataclass
class _Run:
    """What the doctor's AMI session saw."""

    token: str
    events: list[AMIMessage] = field(default_factory=list)
    reports: dict[tuple[str, str], AMIMessage] = field(default_factory=dict)
    waiting: list[tuple[Callable[[], bool], defer.Deferred]] = field(default_factory=list)

    def seen(self, msg: AMIMessage) -> None:
        self.events.append(msg)
        if (msg.event or "").lower() == "userevent" and msg.get("UserEvent") == USER_EVENT \
                and msg.get("Token") == self.token:  # fmt: skip
            key = (msg.get("Check") or "", msg.get("PromptLanguage") or "")
            self.reports[key] = msg
        for entry in list(self.waiting):
            done, d = entry
            if done():
                self.waiting.remove(entry)
                d.callback(None)

    def wait(self, done: Callable[[], bool], clock: Any, timeout: float) -> defer.Deferred:
        """Fires once ``done()`` (after an event), or after ``timeout`` anyway."""
        if done():
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        entry = (done, d)
        self.waiting.append(entry)

        def expire() -> None:
            if entry in self.waiting:
                self.waiting.remove(entry)
                d.callback(None)

        call = clock.callLater(timeout, expire)
        d.addBoth(lambda r: (call.cancel() if call.active() else None, r)[1])
        return d

    def ours(self, msg: AMIMessage) -> bool:
        """An event of one of the doctor's Local channels."""
        return (msg.get("Channel") or "").startswith("Local/") and \
            f"@{DOCTOR_CONTEXT}-" in (msg.get("Channel") or "")  # fmt: skip

    def named(self, name: str, *, ours: bool = True) -> list[AMIMessage]:
        return [m for m in self.events
                if (m.event or "").lower() == name.lower() and (not ours or self.ours(m))]


class Doctor:
    """The checks of one deployment (see the module's docstring).

    :param config: the loaded configuration
    :param reactor: the reactor (TCP, timers)
    :param timeout: seconds any one step may take
    :param sounds: the prompts folder (default: the shipped one; its
        languages are those checked on the PBX)
    :param dialplan: the dialplan file whose contexts must be loaded
        (default: the shipped ``dialplan/extensions.conf``)
    """

    def __init__(
        self,
        config: Config,
        reactor: Any,
        *,
        timeout: float = 10.0,
        sounds: Path | None = None,
        dialplan: Path | None = None,
    ):
        self.config = config
        self.reactor = reactor
        self.timeout = timeout
        self.sounds = sounds if sounds is not None else default_source_dir()
        self.dialplan = dialplan or shipped_dir() / "dialplan" / "extensions.conf"
        self.token = f"doctor-{secrets.token_hex(6)}"
        self._proto: AMIProtocol | None = None
        self._run = _Run(self.token)

    async def run(self) -> list[Check]:
        """Every check but ``config``, in :data:`CHECKS` order."""
        found: dict[str, Check] = {}
        try:
            found["ami"] = await self._login()
        except Exception as e:  # noqa: BLE001 - the doctor reports, it does not crash
            found["ami"] = Check("ami", False, f"unexpected error: {e}")
        if not found["ami"].ok:
            return [found["ami"], *self._not_checked(CHECKS[2:], "no AMI session (see ami)")]
        try:
            found.update(await self._checks())
        finally:
            await self._logoff()
        return [found[name] for name in CHECKS[1:]]

    @staticmethod
    def _not_checked(names: Iterable[str], why: str) -> list[Check]:
        return [Check(name, False, f"not checked: {why}") for name in names]

    def _by_call(self, why: str) -> dict[str, Check]:
        """The checks made with the doctor's calls, not checked because of ``why``."""
        return {c.name: c for c in self._not_checked(("fastagi", "prompts", "recordings"), why)}

    # -- AMI ----------------------------------------------------------------------

    async def _login(self) -> Check:
        ami = self.config.ami
        where = f"{ami.host}:{ami.port}"
        proto = AMIProtocol(clock=self.reactor, action_timeout=self.timeout, name="doctor")
        proto.on_event = self._run.seen
        endpoint = HostnameEndpoint(self.reactor, ami.host, ami.port, timeout=self.timeout)
        try:
            await connectProtocol(endpoint, proto)
            await proto.when_greeted()
        except (error.ConnectError, error.DNSLookupError, OSError) as e:
            return Check("ami", False, (
                f"cannot connect to {where} ({_why(e)}): is Asterisk running, with manager.conf "
                f"[general] enabled = yes, port = {ami.port} and a bindaddr this host "
                "reaches? ([ami] host, port)"))  # fmt: skip
        except AMIError as e:
            proto.transport.loseConnection()
            return Check("ami", False, f"{where} is not an Asterisk manager port: {e}")
        self._proto = proto
        try:
            await proto.login(ami.username, ami.secret)
        except AMIAuthenticationError as e:
            return Check("ami", False, (
                f"{where} refused the login of {ami.username!r} ({e}): manager.conf needs a "
                f"[{ami.username}] section with secret = [ami] secret, and its permit must "
                "include this host"))  # fmt: skip
        except AMIError as e:
            return Check("ami", False, f"login to {where} failed: {e}")
        version = ""
        try:
            settings = await proto.send_action("CoreSettings")
            version = f", Asterisk {settings.get('AsteriskVersion')}"
        except AMIError:
            pass  # the version is a courtesy: CoreSettings needs system or reporting
        return Check("ami", True, f"logged in to {where} as {ami.username!r}{version}")

    async def _logoff(self) -> None:
        proto, self._proto = self._proto, None
        if proto is None or proto.closed:
            return
        try:
            await proto.send_action("Logoff", timeout=2.0)
        except AMIError:
            pass
        if not proto.closed:
            proto.transport.loseConnection()

    # -- the checks ---------------------------------------------------------------

    async def _checks(self) -> dict[str, Check]:
        found = {"ami write": await self._write_classes()}
        contexts, found["dialplan"] = await self._dialplan()
        if DOCTOR_CONTEXT in contexts:
            calls, no_calls = await self._calls()
            found.update(calls)
        else:
            no_calls = f"[{DOCTOR_CONTEXT}] is not loaded (see dialplan)"
            found.update(self._by_call(no_calls))
        found["ami read"] = self._read_classes(no_calls)
        found["channelvars"] = self._channelvars(no_calls)
        return found

    async def _write_classes(self) -> Check:
        assert self._proto is not None
        user = self.config.ami.username
        try:
            listed = await self._proto.send_action("ListCommands")
        except AMIError as e:
            return Check("ami write", False, f"ListCommands failed: {e}")
        allowed = {name.lower() for name, _value in listed.raw}
        missing = [a for a in REQUIRED_ACTIONS if a.lower() not in allowed]
        if missing:
            classes = sorted({REQUIRED_ACTIONS[a] for a in missing})
            return Check("ami write", False, (
                f"the AMI user may not send {', '.join(missing)} (write class "
                f"{', '.join(classes)}): set write = call,originate,reporting in [{user}] of "
                "manager.conf, then 'manager reload'"))  # fmt: skip
        extra = [a for a in ("Command", "Filter") if a.lower() in allowed]
        note = (f" (it may also send {', '.join(extra)}: agi_app needs no system or command "
                "write class)") if extra else ""  # fmt: skip
        return Check("ami write", True, f"every action agi_app sends is allowed{note}")

    async def _dialplan(self) -> tuple[set[str], Check]:
        assert self._proto is not None
        try:
            wanted = dialplan_contexts(self.dialplan)
        except OSError as e:
            return set(), Check("dialplan", False, f"cannot read {self.dialplan}: {_why(e)}")
        loaded, missing = set(), []
        for context in wanted:
            try:
                await self._proto.send_action("ShowDialPlan", [("Context", context)],
                                              collect=True)  # fmt: skip
            except AMIActionError:
                missing.append(context)
                continue
            except AMIError as e:
                return loaded, Check("dialplan", False, f"ShowDialPlan failed: {e}")
            loaded.add(context)
        url = await self._global("AGI_APP_URL")
        if missing:
            return loaded, Check("dialplan", False, (
                f"not loaded: {', '.join(missing)}: #include {self.dialplan} in Asterisk's "
                "extensions.conf (copy the file to the PBX if agi_app runs elsewhere), then "
                "'dialplan reload'"))  # fmt: skip
        if not url:
            return loaded, Check("dialplan", False, (
                "AGI_APP_URL is not set: set it in [globals] after the #include, e.g. "
                f"AGI_APP_URL=agi://{_listen_address(self.config.agi.listen)}"))  # fmt: skip
        return loaded, Check("dialplan", True,
                             f"{len(loaded)} agi-app contexts loaded, AGI_APP_URL={url}")

    async def _global(self, name: str) -> str:
        assert self._proto is not None
        try:
            answer = await self._proto.send_action("Getvar", [("Variable", name)])
        except AMIError:
            return ""
        return answer.get("Value") or ""

    def _read_classes(self, no_calls: str) -> Check:
        """``no_calls``: why the doctor placed no call ("" when it did)."""
        user = self.config.ami.username
        missing = [klass for klass, event in _READ_CLASSES.items()
                   if (klass == "system" or not no_calls)
                   and not self._run.named(event, ours=klass != "system")]  # fmt: skip
        unchecked = f"; call and user events not checked: {no_calls}" if no_calls else ""
        if missing:
            return Check("ami read", False, (
                f"no events of class {', '.join(missing)} arrive: set read = "
                f"system,call,agent,user,dtmf,reporting in [{user}] of manager.conf, then "
                f"'manager reload'{unchecked}"))  # fmt: skip
        if no_calls:
            return Check("ami read", False, f"system events arrive{unchecked}")
        return Check("ami read", True, "system, call and user events arrive")

    def _channelvars(self, no_calls: str) -> Check:
        if no_calls:
            return Check("channelvars", False, f"not checked: {no_calls}")
        events = self._run.named("Hangup") + self._run.named("UserEvent")
        if not events:
            return Check("channelvars", False,
                         "not checked: no event of the doctor's calls arrived (see ami read)")
        if any(m.variables.get(CALL_ID_VAR) == self.token for m in events):
            return Check("channelvars", True, f"channel events carry {CALL_ID_VAR}")
        return Check("channelvars", False, (
            f"channel events do not carry {CALL_ID_VAR}: add channelvars = {CALL_ID_VAR} to "
            "[general] of manager.conf, then 'manager reload' (without it CLIENT_PICKUP is "
            "timed late and calls are not taken up again after a restart of agi_app)"))

    # -- the doctor's calls --------------------------------------------------------

    async def _calls(self) -> tuple[dict[str, Check], str]:
        """The checks made with the doctor's calls, and why no call could be
        placed ("" when some were)."""
        try:
            langs = _languages(self.sounds)
        except SoundsError as e:
            langs, sounds_error = [], str(e)
        else:
            sounds_error = ""
        listener, own = await self._fastagi_listener()
        name = f"agi-app-doctor-{self.token[len('doctor-'):]}.wav"
        pbx_file = f"{self.config.dialing.pbx_recordings.rstrip('/')}/{name}"
        local_file = Path(self.config.dialing.recordings_dir) / name
        calls = {("fastagi", ""): ("fastagi", []),
                 ("record", ""): ("record", [("AGI_APP_DOCTOR_FILE", pbx_file)])}
        for lang in langs:
            calls[("prompt", lang)] = ("prompt", [("AGI_APP_DOCTOR_LANG", lang)])
        try:
            results = await defer.gatherResults([defer.ensureDeferred(self._originate(*call))
                                                 for call in calls.values()])  # fmt: skip
            failed = {key: why for key, why in zip(calls, results, strict=True) if why}
            placed = [key for key in calls if key not in failed]
            if not placed:
                why = f"no call could be placed ({next(iter(failed.values()))}; see ami write)"
                return self._by_call(why), why
            await self._run.wait(lambda: self._calls_over(placed), self.reactor,
                                 3 * self.timeout)  # fmt: skip
            if not self._run.named("UserEvent"):
                why = "no UserEvent of the doctor's calls arrives (read class user, see ami read)"
                return self._by_call(why), ""
            found = {
                "fastagi": self._fastagi(listener, own),
                "prompts": self._prompts(langs, sounds_error),
                "recordings": await self._recordings(pbx_file, local_file),
            }
        finally:
            if listener is not None:
                await defer.maybeDeferred(listener.stopListening)
        for (check, _lang), why in failed.items():
            name = {"prompt": "prompts", "record": "recordings"}.get(check, check)
            found[name] = Check(name, False, f"{why}; {found[name].text}")
        return found, ""

    def _calls_over(self, placed: list[tuple[str, str]]) -> bool:
        """Every call the doctor placed has reported and hung up (or, without
        call events, has reported)."""
        reported = set(placed) <= set(self._run.reports)
        started = self._run.named("Newchannel")
        if not started:
            return reported
        ended = {m.get("Uniqueid") for m in self._run.named("Hangup")}
        return (len(ended) >= 2 * len(placed)
                and {m.get("Uniqueid") for m in started} <= ended)

    async def _originate(self, exten: str, variables: Iterable[tuple[str, str]] = ()) -> str:
        """Originate ``Local/<exten>@agi-app-doctor/n`` (its ;1 half waits);
        "" when Asterisk took it, else why not."""
        assert self._proto is not None
        headers = [
            ("Channel", f"Local/{exten}@{DOCTOR_CONTEXT}/n"),
            ("Application", "Wait"),
            ("Data", str(int(3 * self.timeout))),
            ("Timeout", str(int(self.timeout * 1000))),
            ("Async", "true"),
            ("Variable", f"__{CALL_ID_VAR}={self.token}"),
            *(("Variable", f"{k}={v}") for k, v in variables),
        ]
        try:
            answer = await self._proto.send_action("Originate", headers,
                                                   final_event="OriginateResponse")  # fmt: skip
        except AMIError as e:
            return f"Originate of {exten} failed: {e}"
        if (answer.get("Response") or "").lower() != "success":
            return f"Originate of {exten} failed (reason {answer.get('Reason')})"
        return ""

    async def _fastagi_listener(self) -> tuple[Any, bool]:
        """``(port or None, listening)``: a listener of the doctor's own on
        ``[agi] listen`` (None, False when the address is taken: agi_app, or
        something else, listens there already)."""
        registry = ScriptRegistry()
        register_scripts(registry)
        try:
            port = await agi_listen(self.reactor, self.config.agi, registry)
        except error.CannotListenError:
            return None, False
        return port, True

    def _fastagi(self, listener: Any, own: bool) -> Check:
        listen = self.config.agi.listen
        report = self._run.reports.get(("fastagi", ""))
        if report is None:
            return Check("fastagi", False, "no report from [agi-app-doctor] fastagi: "
                         "see ami read (class user) and the Asterisk log")
        url = report.get("URL") or "(AGI_APP_URL empty)"
        status, result = report.get("AGIStatus") or "", report.get("Result") or ""
        who = "the running agi_app" if not own else f"the doctor's listener on {listen}"
        factory = getattr(listener, "factory", None)
        if result == "OK":
            return Check("fastagi", True, f"Asterisk reached {url} ({who})")
        if factory is not None and factory.refused:
            return Check("fastagi", False, (
                f"Asterisk connected to {url} from an address [agi] allowed_peers refuses "
                f"({', '.join(self.config.agi.allowed_peers)}): add the PBX's address"))
        if result == "NOTFOUND":
            return Check("fastagi", False, (
                f"{url} answered but knows no {DOCTOR_SCRIPT} script: another program, or "
                f"an older agi_app, listens there"))
        if own:
            where = f"the doctor listened on {listen} (agi_app is not running)"
        else:
            where = f"{listen} is taken (agi_app running?)"
        url_port, listen_port = _port(url, r":(\d+)/*$"), _port(listen, r"^tcp6?:(\d+)")
        if url_port and listen_port and url_port != listen_port:
            where += f"; AGI_APP_URL's port is {url_port}, [agi] listen's {listen_port}"
        return Check("fastagi", False, (
            f"Asterisk could not run {url}/{DOCTOR_SCRIPT} (AGISTATUS={status or '?'}"
            f"{', AGI_APP_RESULT=' + result if result else ''}); {where}: AGI_APP_URL in "
            "[globals] must be agi://<address of agi_app>:<port of [agi] listen>, reachable "
            "from the PBX"))  # fmt: skip

    def _prompts(self, langs: list[str], sounds_error: str) -> Check:
        if sounds_error:
            return Check("prompts", False, f"the prompts folder cannot be read: {sounds_error}")
        if not langs:
            return Check("prompts", False, f"no prompts in {self.sounds} to look for")
        missing, silent = [], []
        for lang in langs:
            report = self._run.reports.get(("prompt", lang))
            if report is None:
                silent.append(lang)
            elif (report.get("Status") or "") != "SUCCESS":
                missing.append(lang)
        if missing:
            return Check("prompts", False, (
                f"agi_app/{_PROMPT} does not play in {', '.join(missing)}: on the PBX run "
                "agi-app install-sounds ASTERISK_SOUNDS_DIR (e.g. /usr/share/asterisk/sounds),"
                " which puts them in <dir>/<lang>/agi_app/"))  # fmt: skip
        if silent:
            return Check("prompts", False, f"no report for {', '.join(silent)} "
                         "(see ami read and the Asterisk log)")
        return Check("prompts", True, f"agi_app/{_PROMPT} plays in {', '.join(langs)}")

    async def _recordings(self, pbx_file: str, local_file: Path) -> Check:
        report = self._run.reports.get(("record", ""))
        if report is None:
            return Check("recordings", False, "no report from [agi-app-doctor] record "
                         "(see ami read and the Asterisk log)")
        # MixMonitor creates the file when it starts and closes it on its own
        # thread once the channel is gone: a moment after the Hangup at most
        for _ in range(20):
            if local_file.exists():
                break
            await task.deferLater(self.reactor, 0.1, lambda: None)
        dialing = self.config.dialing
        if not local_file.exists():
            return Check("recordings", False, (
                f"MixMonitor wrote {pbx_file} on the PBX, but it is not at {local_file}: "
                "[dialing] recordings_dir must be the recordings folder as agi_app sees it "
                f"(now {dialing.recordings_dir}) and pbx_recordings_dir the same folder as "
                f"Asterisk sees it (now {dialing.pbx_recordings}); shared (NFS, bind mount) "
                "if they are on different hosts.  Remove the file on the PBX"))  # fmt: skip
        try:
            with local_file.open("rb") as f:
                f.read(64)
        except OSError as e:
            return Check("recordings", False, (
                f"{local_file} is there but agi_app cannot read it ({_why(e)}): give agi_app's "
                "user read access to the recordings folder (e.g. the asterisk group)"))
        finally:
            try:
                os.unlink(local_file)
            except OSError:
                pass
        return Check("recordings", True,
                     f"MixMonitor's {pbx_file} is readable at {local_file}")


def _why(e: BaseException) -> str:
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return text.strip().rstrip(".")


def _port(text: str, pattern: str) -> str | None:
    found = re.search(pattern, text)
    return found.group(1) if found else None


def _listen_address(listen: str) -> str:
    port = re.search(r"^tcp6?:(\d+)", listen)
    host = re.search(r"interface=([^:]+)", listen)
    return f"{host.group(1) if host else '<agi_app host>'}:{port.group(1) if port else 4573}"


async def diagnose(path: str | None, reactor: Any, **options: Any) -> list[Check]:
    """Load the configuration at ``path`` and run every check."""
    try:
        config = load(path)
    except ConfigError as e:
        return [Check("config", False, f"{e}"),
                *Doctor._not_checked(CHECKS[1:], "the configuration does not load")]
    where = path if path is not None else "(defaults and AGI_APP_* variables)"
    checks = [Check("config", True, f"{where} is valid")]
    return checks + await Doctor(config, reactor, **options).run()
