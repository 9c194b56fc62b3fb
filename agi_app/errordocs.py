"""The error catalogue (``docs/errors.md``), generated from the code.

Which codes agi_app sends, with which HTTP status and from which module, is
read from the source itself: every call that builds an
:class:`~agi_app.errors.AppError` (or a subclass, found by importing the
package), bound to the class's own signature to find its ``code`` and
``status`` (an argument, else the class's default; ``invalid_<field>`` for
an :class:`~agi_app.errors.InvalidInput` without a code), and every error
message the widget's WebSocket writes directly (``_error("code", ...)``).
A code built from a variable (``f"unknown_{field}"``) is a family,
``unknown_<field>``.  What a code means and what a client should do is
written once, in :data:`agi_app.errors.CATALOGUE`.

``python -m agi_app.errordocs`` prints the catalogue (``> docs/errors.md``);
``tests/unit/test_docs_errors.py`` fails when the code and the catalogue
disagree (a code sent but not catalogued, catalogued but never sent, sent
with another status or on another channel) or when ``docs/errors.md`` is not
the generated text.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import agi_app
from agi_app.errors import CATALOGUE, HTTP, WIDGET, AppError, ErrorCode, InvalidInput
from agi_app.ws import server as ws_server

__all__ = ["Use", "check", "main", "render", "scan"]

ROOT = Path(agi_app.__file__).parent
#: Not part of the service: the test bed and the CRM-side Python client.
SKIPPED = ("sandbox", "client.py", "errordocs.py", "testing.py")
#: The widget's own error messages (``WidgetProtocol._error(code, message)``).
_WIDGET_SENDERS = {"_error"}
_PLACEHOLDER = "<field>"
#: Errors raised where no client waits for an answer: ``(module, class)``.
#: An IVR menu removed while its call was ringing ends that call in the
#: FastAGI script (logged); the API checked the name when the call was placed.
#: A FastAGI session whose channel is live on no PBX that may run its script
#: (several PBXs) is refused in the session itself (AGI_APP_RESULT=ERROR).
NOT_ANSWERED = frozenset({("ivr/service.py", "UnknownMenu"), ("pbxs.py", "UnknownSession")})


@dataclass(frozen=True)
class Use:
    """One place that builds an error answer.

    ``code`` is the code, or a family with ``<field>`` where a variable
    goes; ``status`` the HTTP status (None: a widget message only);
    ``module`` the file under ``agi_app/``."""

    code: str
    status: int | None
    module: str
    line: int


def _sources() -> list[Path]:
    out = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if any(rel == s or rel.startswith(s + "/") or rel.endswith("/" + s) for s in SKIPPED):
            continue
        out.append(path)
    return out


def _error_classes() -> dict[str, type[AppError]]:
    """Every :class:`AppError` subclass of the package, by class name."""
    for info in pkgutil.walk_packages([str(ROOT)], prefix="agi_app."):
        if info.name.split(".")[1] in ("sandbox", "client", "demo", "cli", "__main__"):
            continue
        importlib.import_module(info.name)
    found: dict[str, type[AppError]] = {"AppError": AppError}
    todo = [AppError]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if not sub.__module__.startswith("agi_app."):
                continue  # a test's own subclass
            if sub.__name__ in found and found[sub.__name__] is not sub:
                raise RuntimeError(f"two error classes named {sub.__name__}")
            found[sub.__name__] = sub
            todo.append(sub)
    return found


def _text(node: ast.AST | None, defaults: dict[str, str]) -> str | None:
    """A literal string, or a family (an f-string's holes as ``<field>``).

    A hole, or a whole value, that is a parameter of the enclosing function
    with a string default (``field: str = "ivrName"``) is that default: what
    the callers in the API use."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name) and node.id in defaults:
        return defaults[node.id]
    if isinstance(node, ast.JoinedStr):
        parts = []
        for part in node.values:
            if isinstance(part, ast.Constant):
                parts.append(str(part.value))
            elif isinstance(part, ast.FormattedValue) and isinstance(part.value, ast.Name) \
                    and part.value.id in defaults:
                parts.append(defaults[part.value.id])
            else:
                parts.append(_PLACEHOLDER)
        return "".join(parts)
    return None


def _string_defaults(func: ast.FunctionDef | ast.AsyncFunctionDef) -> dict[str, str]:
    args = func.args
    positional = [*args.posonlyargs, *args.args]
    with_default = positional[len(positional) - len(args.defaults):]
    pairs = list(zip(with_default, args.defaults, strict=True))
    pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)
              if d is not None]  # fmt: skip
    return {a.arg: d.value for a, d in pairs
            if isinstance(d, ast.Constant) and isinstance(d.value, str)}  # fmt: skip


def _number(node: ast.AST | None) -> int | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    return None


def _callee(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Name):
        return node.func.id
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return None


def _bind(cls: type[AppError], call: ast.Call) -> dict[str, ast.AST] | None:
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    if any(isinstance(a, ast.Starred) for a in call.args) or any(
        k.arg is None for k in call.keywords
    ):
        return None
    bound: dict[str, ast.AST] = {}
    for param, arg in zip(params, call.args, strict=False):  # (fewer arguments than parameters)
        bound[param.name] = arg
    for kw in call.keywords:
        bound[str(kw.arg)] = kw.value
    return bound


def _use(cls: type[AppError], call: ast.Call, module: str, defaults: dict[str, str]) -> Use | None:
    bound = _bind(cls, call)
    if bound is None:
        raise ValueError(f"{module}:{call.lineno}: cannot read the arguments of {cls.__name__}")
    status = _number(bound.get("status"))
    if "status" in bound and status is None:
        raise ValueError(f"{module}:{call.lineno}: {cls.__name__} with a computed status")
    status = status if status is not None else cls.status
    accepts_code = "code" in inspect.signature(cls.__init__).parameters
    given = bound.get("code")
    if given is not None and not (isinstance(given, ast.Constant) and given.value is None):
        code = _text(given, defaults)
        if code is None:
            return None  # a code handed on (``e.code``): counted where it was made
    elif issubclass(cls, InvalidInput) and accepts_code:
        code = f"invalid_{_text(bound.get('field'), defaults) or _PLACEHOLDER}"
    elif accepts_code:
        code = cls.code
    else:
        # The class fixes its code itself (``super().__init__(..., code=X)``).
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
        dummy = {p.name: "x" for p in params if p.default is inspect.Parameter.empty
                 and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}  # fmt: skip
        code = cls(**dummy).code
    return Use(code, status, module, call.lineno)


class _Scanner(ast.NodeVisitor):
    def __init__(self, classes: dict[str, type[AppError]], module: str):
        self.classes, self.module = classes, module
        self.defaults: list[dict[str, str]] = [{}]
        self.uses: list[Use] = []

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.defaults.append({**self.defaults[-1], **_string_defaults(node)})
        self.generic_visit(node)
        self.defaults.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = _function

    def visit_Call(self, node: ast.Call) -> None:
        name = _callee(node)
        if name in self.classes and (self.module, name) not in NOT_ANSWERED:
            use = _use(self.classes[name], node, self.module, self.defaults[-1])
            if use is not None:
                self.uses.append(use)
        elif name in _WIDGET_SENDERS and self.module.startswith("ws/") and node.args:
            code = _text(node.args[0], self.defaults[-1])
            if code is not None:
                self.uses.append(Use(code, None, self.module, node.lineno))
        self.generic_visit(node)


def scan(paths: Iterable[Path] | None = None) -> list[Use]:
    """Every error answer the source builds (see the module docstring)."""
    classes = _error_classes()
    uses: list[Use] = []
    for path in paths if paths is not None else _sources():
        module = path.relative_to(ROOT).as_posix()
        scanner = _Scanner(classes, module)
        scanner.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        uses += scanner.uses
    return uses


def _pattern(code: str) -> re.Pattern[str]:
    return re.compile("".join(
        "[A-Za-z0-9_]+" if part == _PLACEHOLDER else re.escape(part)
        for part in re.split(f"({re.escape(_PLACEHOLDER)})", code)
    ))  # fmt: skip


def entry_of(code: str, catalogue: Iterable[ErrorCode] = CATALOGUE) -> ErrorCode | None:
    """The catalogue entry of a code: its own, else the family it belongs to
    (``invalid_ttl`` → ``invalid_<field>``)."""
    catalogue = list(catalogue)
    for entry in catalogue:
        if entry.code == code:
            return entry
    for entry in catalogue:
        if _PLACEHOLDER in entry.code and _pattern(entry.code).fullmatch(code):
            return entry
    return None


def _channel_of(module: str) -> str | None:
    if module.startswith("ws/"):
        return WIDGET
    if module.startswith("web/"):
        return HTTP
    return None


def check(uses: list[Use], catalogue: Iterable[ErrorCode] = CATALOGUE) -> list[str]:
    """What is wrong between the uses and the catalogue (empty: nothing)."""
    catalogue = list(catalogue)
    problems = []
    used: set[str] = set()
    for use in uses:
        entry = entry_of(use.code, catalogue)
        where = f"{use.module}:{use.line}"
        if entry is None:
            problems.append(f"{where}: code {use.code!r} is not in agi_app.errors.CATALOGUE")
            continue
        used.add(entry.code)
        channel = _channel_of(use.module)
        if channel is not None and channel not in entry.channels:
            problems.append(f"{where}: {use.code!r} is sent on the {channel}, catalogued "
                            f"for {', '.join(entry.channels)} only")  # fmt: skip
        if channel != WIDGET and use.status is not None and use.status not in entry.statuses:
            problems.append(f"{where}: {use.code!r} sent with {use.status}, catalogued "
                            f"{'/'.join(map(str, entry.statuses)) or 'widget only'}")  # fmt: skip
    for entry in catalogue:
        if entry.code not in used:
            problems.append(f"{entry.code!r} is catalogued but no code sends it")
    return problems


def _modules(uses: list[Use], entry: ErrorCode) -> list[str]:
    return sorted({u.module for u in uses if entry_of(u.code) is entry})


def _members(uses: list[Use], entry: ErrorCode) -> list[str]:
    """The codes of a family the source spells out (``invalid_ttl``...)."""
    return sorted({u.code for u in uses if u.code != entry.code and entry_of(u.code) is entry},
                  key=str.lower)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(uses: list[Use] | None = None) -> str:
    """The text of ``docs/errors.md``."""
    uses = scan() if uses is None else uses
    out = [
        "# Error codes",
        "",
        "<!-- Generated by `python -m agi_app.errordocs > docs/errors.md` from the code",
        "     (agi_app/errors.py CATALOGUE and the raise sites); do not edit by hand.",
        "     tests/unit/test_docs_errors.py fails when this file is out of date. -->",
        "",
        "Every error agi_app answers has a stable `code` for programs and a",
        "`message` for people (English, may change between versions: never",
        "parse it). The HTTP API answers with the status below and",
        '`{"error": {"code", "message", "field"?}}` (plus keys such as `call_id`',
        "where a row says so); the widget's WebSocket answers a request with",
        '`{"type": "error", "code", "message", "id"?}` and stays open. `field`',
        "names the parameter at fault when there is one.",
        "",
        "A code with `<field>` is a family: `<field>` is the parameter or message",
        "field named in `error.field` (e.g. `invalid_phone`, `missing_sip`); its",
        "rule is in [api.md](api.md) and `/openapi.json`. Codes are only ever",
        "added within a major version ([versioning.md](versioning.md)); handle an",
        "unknown code by its HTTP status class.",
        "",
        "Channels: **HTTP** the API (and its status); **widget** an `error`",
        "message on the WebSocket (HTTP status not sent).",
        "",
        "| code | HTTP | channels | meaning | what the client should do | raised in |",
        "|---|---|---|---|---|---|",
    ]
    for entry in sorted(CATALOGUE, key=lambda e: (e.statuses[:1] or (499,), e.code.lower())):
        meaning = entry.meaning
        members = _members(uses, entry)
        if members:
            meaning += " Among them: " + ", ".join(f"`{m}`" for m in members) + "."
        modules = ", ".join(f"`{m}`" for m in _modules(uses, entry))
        status = "/".join(map(str, entry.statuses)) or "–"
        out.append(f"| `{entry.code}` | {status} | {', '.join(entry.channels)} | "
                   f"{_cell(meaning)} | {_cell(entry.action)} | {modules} |")  # fmt: skip
    out += [
        "",
        "## Widget close codes",
        "",
        "A refused widget connection is closed (and not opened again by `pz.js`):",
        "",
        "| close code | constant | when |",
        "|---|---|---|",
    ]
    out += [f"| {number} | `{name}` | {_cell(when)} |" for number, name, when in
            _close_codes()]  # fmt: skip
    out += [
        "",
        "Without a matching `Origin` the handshake itself is refused (HTTP 403,",
        "`origin not allowed`). 1009 closes a message over 64 KiB, 1007 a text",
        "frame that is not UTF-8, 1001 (`server shutting down`) a stopping server.",
        "",
    ]
    return "\n".join(out)


def _close_codes() -> list[tuple[int, str, str]]:
    """The widget's close codes: the ``CLOSE_*`` constants and their comments."""
    source = (ROOT / "ws" / "server.py").read_text(encoding="utf-8").splitlines()
    rows = []
    for index, line in enumerate(source):
        found = re.match(r"(CLOSE_[A-Z_]+) = (\d+)", line)
        if not found:
            continue
        comment: list[str] = []
        back = index - 1
        while back >= 0 and source[back].startswith("#:"):
            comment.insert(0, source[back][2:].strip())
            back -= 1
        text = " ".join(comment).replace("``", "`")
        text = re.sub(r"^close code( and reason)?:? ?", lambda m: "reason: " if m.group(1) else "",
                      text)  # fmt: skip
        rows.append((getattr(ws_server, found.group(1)), found.group(1), text))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Print the catalogue; exit 1 (with the problems on stderr) when the
    code and :data:`~agi_app.errors.CATALOGUE` disagree."""
    uses = scan()
    problems = check(uses)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    sys.stdout.write(render(uses))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
