"""The declarations of the API's parameters (agi_app.web.params): every route
of the application is declared, /openapi.json documents each parameter as
declared, and the parser accepts exactly what the documented schema accepts
(checked with an independent JSON Schema validator)."""

from __future__ import annotations

import json
from typing import Any

import jsonschema_rs
import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock

from agi_app import validation as v
from agi_app.app import Application
from agi_app.config import load
from agi_app.errors import AppError, InvalidInput
from agi_app.web import build_site
from agi_app.web.api import ApiRequest, Params, Router
from agi_app.web.params import (
    PATH,
    Answer,
    Operation,
    Param,
    add_route,
    extension,
    flag,
    known_trunk,
    whole_number,
    word_list,
)
from agi_app.web.testing import MemoryHTTP


def _reactor():
    from twisted.internet import reactor

    return reactor


def _application_router() -> Router:
    app = Application(load(None, environ={}), MemoryReactorClock())
    return app.router()


def _request(values: dict[str, list[Any]], method: str = "GET") -> ApiRequest:
    return ApiRequest(None, method=method, path="/", fmt="json", params=Params(values))


def _served(router: Router) -> dict:
    """What the application's ``GET /openapi.json`` handler answers."""
    route, _path, _fmt = router.resolve("GET", "/openapi.json")
    coroutine = route.handler(_request({}))
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("the handler waited for something")


ROUTER = _application_router()
ROUTES = list(ROUTER.routes)
DOCUMENT = _served(ROUTER)


@pytest.fixture(scope="module")
def document() -> dict:
    """The document the application serves, through HTTP."""
    http = MemoryHTTP(build_site(ROUTER, api_keys=(), static_dir=None, clock=_reactor()),
                      _reactor())  # fmt: skip

    async def fetch() -> dict:
        response = await http.get("http://127.0.0.1/openapi.json")
        assert response.code == 200
        return json.loads(await response.content())

    served = pytest_twisted.blockon(defer.ensureDeferred(fetch()))
    assert served == DOCUMENT
    return served


# -- every route, documented as declared ------------------------------------------------

_EMPTY = [{"const": ""}, {"type": "null"}]


def _rules(schema: dict) -> list[dict]:
    """The alternatives of a schema, without "empty" and "null" and without
    the annotations the document adds."""
    schema = {k: s for k, s in schema.items() if k not in ("description", "default")}
    alternatives = schema["anyOf"] if set(schema) == {"anyOf"} else [schema]
    return [a for a in alternatives if a not in _EMPTY]


def _documented(doc_op: dict, param: Param) -> tuple[dict, bool]:
    """``(schema, required)`` of ``param`` in an operation of the document."""
    for entry in doc_op.get("parameters", ()):
        if entry["name"] == param.name:
            assert entry["in"] == ("path" if param.location == PATH else "query")
            return entry["schema"], entry["required"]
    body = doc_op["requestBody"]["content"]
    schemas = [c["schema"] for c in body.values()]
    assert all(s == schemas[0] for s in schemas), "every body type has the same fields"
    schema = schemas[0]
    return schema["properties"][param.name], param.name in schema["required"]


def test_every_route_carries_its_declaration():
    assert len(ROUTES) >= 25
    for route in ROUTES:
        op = route.handler.operation
        assert isinstance(op, Operation), route.pattern
        assert route.methods - {"HEAD"} == set(op.methods), route.pattern
        assert (route.auth, route.formats) == (op.auth, op.formats), route.pattern


def test_the_document_has_exactly_the_declared_routes(document):
    declared = {
        (route.handler.operation.path, m.lower()) for route in ROUTES for m in route.methods
        if m != "HEAD"
    }  # fmt: skip
    documented = {(path, m) for path, item in document["paths"].items() for m in item}
    assert documented == declared


def test_the_document_parameters_equal_the_declarations(document):
    checked = 0
    for route in ROUTES:
        op = route.handler.operation
        for method in op.methods:
            doc_op = document["paths"][op.path][method.lower()]
            in_query = method in ("GET", "DELETE")
            listed = [(e["name"], e["in"]) for e in doc_op.get("parameters", ())]
            assert listed == [
                (p.name, "path" if p.location == PATH else "query")
                for p in op.params if p.location == PATH or in_query
            ], (method, op.path)  # fmt: skip
            fields = [p for p in op.params if p.location != PATH]
            if not in_query and fields:
                body = doc_op["requestBody"]
                assert body["required"] == any(p.required for p in fields)
                schema = body["content"]["application/json"]["schema"]
                assert list(schema["properties"]) == [p.name for p in fields]
                assert set(body["content"]) >= {
                    "application/json", "application/x-www-form-urlencoded",
                    "multipart/form-data",
                }  # fmt: skip
            else:
                assert "requestBody" not in doc_op
            for param in op.params:
                schema, required = _documented(doc_op, param)
                assert required == param.required, (op.path, param.name)
                assert _rules(schema) == _rules(dict(param.schema)), (op.path, param.name)
                if not param.required:
                    # empty or null counts as left out, and the document says so
                    assert all(e in schema["anyOf"] for e in _EMPTY), (op.path, param.name)
                    if isinstance(param.default, (bool, int, str)):
                        assert schema["default"] == param.default
                checked += 1
            statuses = {str(a.status) for a in op.answers} | {str(s) for s in op.errors}
            assert set(doc_op["responses"]) == statuses, (method, op.path)
            assert ("security" in doc_op) == (not op.auth)
    assert checked > 80


def test_the_contract_rules_are_the_documented_patterns(document):
    makecall = document["paths"]["/api/makeCall"]["get"]["parameters"]
    patterns = {e["name"]: _rules(e["schema"])[0].get("pattern") for e in makecall}
    assert patterns["sip"] == r"^[A-Za-z0-9_-]{1,32}$" == v.EXTENSION.pattern
    assert patterns["phone"] == r"^\+?[0-9]{3,15}$" == v.PHONE.pattern
    assert patterns["order_id"] == r"^[A-Za-z0-9_.:-]{1,64}$" == v.IDENTIFIER.pattern
    assert patterns["external_key"] == patterns["order_id"]
    assert patterns["trunk"] == v.EXTENSION.pattern


# -- the parser accepts what the documented schema accepts -------------------------------

# Whose parser takes less than the schema says, and why: the text shown on a
# phone must also be printable (a Unicode property no pattern can state); a
# statistics range must be a real date of the calendar (no 2026-02-30).
_SCHEMA_IS_A_FLOOR = {"caller_id_for_employee", "callerIdForEmployee", "from", "to"}


def _kind(schema: dict) -> str:
    rules = _rules(schema)
    types = {r.get("type") for r in rules}
    if "array" in types:
        return "many"
    if "boolean" in types:
        return "flag"
    if any("pattern" in r for r in rules):
        return "text"
    if types == {"integer"}:
        return "integer"
    if all("enum" in r for r in rules):
        return "enum"
    return "other"  # no rule to hold the parser to (a URL, send_dst)


def _cases() -> list[tuple[str, str, Param, dict, str]]:
    cases = {}
    for route in ROUTES:
        op = route.handler.operation
        for method in op.methods:
            doc_op = DOCUMENT["paths"][op.path][method.lower()]
            for param in op.params:
                schema, _required = _documented(doc_op, param)
                kind = _kind(schema)
                if kind == "other":
                    continue
                # One case per kind of parameter: order_id is the same on
                # every route that takes it.
                check = getattr(param.check, "__code__", param.check)
                rules = json.dumps(_rules(schema), sort_keys=True)
                key = (check, rules, kind, param.location, param.required)
                cases.setdefault(key, (op.path, method, param, schema, kind))
    return list(cases.values())


CASES = _cases()
_EDGE = list("09+-_.:@aZ <>#*=$%,&|()/\\\"'`;\t\n\r\x00\x0b\x1c\x7f\x85\xa0\u2028\u3000٣４оſK")


def _mutants(valid: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Valid values changed a little: a character inserted (an odd one or a
    copy of one of its own: one past a length limit), one dropped, cut short,
    doubled."""

    def insert(args: tuple[str, str, int]) -> str:
        value, char, at = args
        at %= len(value) + 1
        return value[:at] + char + value[at:]

    def repeat(args: tuple[str, int]) -> str:
        value, at = args
        if not value:
            return value
        at %= len(value)
        return value[:at] + value[at] + value[at:]

    def drop(args: tuple[str, int]) -> str:
        value, at = args
        if not value:
            return value
        at %= len(value)
        return value[:at] + value[at + 1:]

    at = st.integers(min_value=0)
    return st.one_of(
        st.tuples(valid, st.sampled_from(_EDGE), at).map(insert),
        st.tuples(valid, at).map(repeat),
        st.tuples(valid, at).map(drop),
        st.tuples(valid, at).map(lambda args: args[0][: args[1] % (len(args[0]) + 1)]),
        valid.map(lambda s: s + s),
        valid.map(str.upper),
        valid.map(lambda s: s + "\n"),
    )


def _strings(schema: dict) -> st.SearchStrategy[str]:
    patterns = [r["pattern"] for r in _rules(schema) if "pattern" in r]
    patterns += [r["items"]["pattern"] for r in _rules(schema) if "items" in r]
    valid = st.one_of([st.from_regex(p, fullmatch=True) for p in patterns])
    # without the blanks some rules allow around a word, and its prefixes
    bare = valid.map(str.strip)
    prefixes = bare.flatmap(lambda s: st.sampled_from([s[:i] for i in range(len(s) + 1)]))
    bases = [valid, bare]
    longest = _longest(schema)
    if longest:  # valid ones at their longest: where a wrong length limit shows
        bases.append(bare.filter(bool).map(lambda s: (s * longest)[:longest]))
    return st.one_of(
        *bases, prefixes, _mutants(st.one_of(bases)),
        st.text(max_size=70), st.text(alphabet=st.sampled_from(_EDGE), max_size=20),
    )  # fmt: skip


def _longest(schema: dict) -> int | None:
    """The longest value a pattern's last ``{m,n}`` allows, if it has one."""
    import re

    for rule in _rules(schema):
        pattern = rule.get("pattern") or rule.get("items", {}).get("pattern", "")
        found = re.findall(r"\{\d+,(\d+)\}", pattern)
        if found:
            return int(found[-1]) + (1 if pattern.startswith(r"^\+?") else 0)
    return None


def _values(kind: str, schema: dict, location: str) -> st.SearchStrategy[Any]:
    if kind == "integer":
        rule = _rules(schema)[0]
        lo, hi = rule["minimum"], rule["maximum"]
        return st.one_of(
            st.integers(min_value=lo - 3, max_value=lo + 3),
            st.integers(min_value=hi - 3, max_value=hi + 3),
            st.integers(min_value=-(2**70), max_value=2**70),
            *(() if location == PATH else (st.booleans(),)),
        )
    if kind == "enum":
        words = [w for r in _rules(schema) for w in r["enum"]]
        return st.one_of(st.sampled_from(words), st.sampled_from(words).map(str.upper),
                         st.text(max_size=12))  # fmt: skip
    strings = _strings(schema)
    if kind == "flag":
        return st.one_of(strings, st.integers(min_value=-2, max_value=3), st.booleans())
    if kind == "many":
        return st.one_of(strings, st.lists(strings, max_size=25), st.lists(
            st.sampled_from(["200", "201", "202"]), max_size=4))  # fmt: skip
    return strings


def _parser_takes(param: Param, value: Any) -> bool:
    if param.location == PATH:
        path, values = {param.name: str(value)}, {}
    else:
        path, values = {}, {param.name: [value]}
    try:
        param.read(_request(values), path)
    except InvalidInput:
        return False
    return True


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]} {c[2].name}")
def test_the_parser_takes_exactly_what_the_schema_allows(case):
    path, method, param, schema, kind = case
    validator = jsonschema_rs.validator_for(schema)

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(value=_values(kind, schema, param.location))
    def agree(value: Any) -> None:
        schema_takes = validator.is_valid(value)
        parser_takes = _parser_takes(param, value)
        if param.name in _SCHEMA_IS_A_FLOOR:
            assert parser_takes <= schema_takes, value
        else:
            assert parser_takes == schema_takes, value

    agree()


def _constraints(schema: Any) -> set[str]:
    """Every pattern and every integer range inside a schema."""
    found = set()
    if isinstance(schema, dict):
        if "pattern" in schema:
            found.add(schema["pattern"])
        if schema.get("type") == "integer" and "minimum" in schema:
            found.add(f"{schema['minimum']}..{schema['maximum']}")
        for value in schema.values():
            found |= _constraints(value)
    elif isinstance(schema, list):
        for value in schema:
            found |= _constraints(value)
    return found


def test_the_cases_cover_every_rule_of_the_document():
    documented = set()
    for item in DOCUMENT["paths"].values():
        for op in item.values():
            for entry in op.get("parameters", ()):
                documented |= _constraints(entry["schema"])
            for content in op.get("requestBody", {}).get("content", {}).values():
                documented |= _constraints(content["schema"])
    covered = set().union(*(_constraints(schema) for *_, schema, _kind in CASES))
    assert covered == documented
    assert {v.PHONE.pattern, v.EXTENSION.pattern, v.IDENTIFIER.pattern, v.FLAG.pattern,
            v.PROMPT_NAME.pattern} <= covered  # fmt: skip


# -- reading a declared parameter --------------------------------------------------------

SIP = extension("sip", "operator", required=True)
WAIT = flag("wait", "wait", True)
PAGE = whole_number("page", "page", 1, 9, default=1)


@pytest.mark.parametrize("given_as", [{}, {"sip": [""]}, {"sip": [None]}])
def test_a_missing_required_parameter_is_missing_field(given_as):
    with pytest.raises(InvalidInput) as info:
        SIP.read(_request(given_as), {})
    assert info.value.body() == {
        "error": {"code": "missing_sip", "message": "sip is required", "field": "sip"}
    }


@pytest.mark.parametrize("given_as", [{}, {"wait": [""]}, {"wait": [None]}])
def test_an_absent_optional_parameter_is_its_default(given_as):
    assert WAIT.read(_request(given_as), {}) is True
    assert PAGE.read(_request({k.replace("wait", "page"): x for k, x in given_as.items()}),
                     {}) == 1  # fmt: skip


def test_a_bad_value_is_invalid_field_with_the_checkers_message():
    with pytest.raises(InvalidInput) as info:
        SIP.read(_request({"sip": ["10&00"]}), {})
    assert info.value.body()["error"] == {
        "code": "invalid_sip", "message": "sip must be 1 to 32 of A-Z a-z 0-9 _ -", "field": "sip"
    }
    with pytest.raises(InvalidInput, match="page must be between 1 and 9"):
        PAGE.read(_request({"page": ["10"]}), {})


def test_a_repeated_parameter_is_refused():
    with pytest.raises(AppError) as info:
        SIP.read(_request({"sip": ["1000", "1001"]}), {})
    assert (info.value.status, info.value.code) == (400, "repeated_parameter")


def test_errors_can_name_another_field():
    sub = whole_number("sub_id", "id", 1, 5, required=True, location=PATH, field="id")
    assert sub.read(_request({}), {"sub_id": "3"}) == 3
    with pytest.raises(InvalidInput) as info:
        sub.read(_request({}), {"sub_id": "x"})
    assert (info.value.code, info.value.field) == ("invalid_id", "id")


def test_declarations_are_checked_when_made():
    with pytest.raises(ValueError, match="always required"):
        Param("x", v.extension, {}, "x", location=PATH)
    with pytest.raises(ValueError, match="not declared"):
        Operation(("GET",), "/a/{x}", "s", "t", (Answer(200, "ok"),))
    with pytest.raises(ValueError, match="twice"):
        Operation(("GET",), "/a", "s", "t", (Answer(200, "ok"),), params=(SIP, SIP))
    op = Operation(("GET",), "/a", "s", "t", (Answer(200, "ok"),), params=(SIP,))
    with pytest.raises(ValueError, match="undeclared"):
        add_route(Router(), op, lambda req, args: {}, rules={"phone": known_trunk(["pstn"])})


def test_rules_run_after_the_declared_check_and_only_on_given_values():
    trunk = extension("trunk", "trunk")
    op = Operation(("GET",), "/a", "s", "t", (Answer(200, "ok"),), params=(SIP, trunk))
    rules = {"trunk": known_trunk(["pstn", "pstn2"])}
    assert op.parse(_request({"sip": ["1000"]}), {}, rules) == {"sip": "1000", "trunk": None}
    args = op.parse(_request({"sip": ["1000"], "trunk": ["pstn2"]}), {}, rules)
    assert args["trunk"] == "pstn2"
    with pytest.raises(InvalidInput) as info:
        op.parse(_request({"sip": ["1000"], "trunk": ["101"]}), {}, rules)
    assert (info.value.code, info.value.field) == ("unknown_trunk", "trunk")
    with pytest.raises(InvalidInput) as info:  # the form first: pstn/x is no trunk name
        op.parse(_request({"sip": ["1000"], "trunk": ["pstn/x"]}), {}, rules)
    assert info.value.code == "invalid_trunk"
    with pytest.raises(InvalidInput) as info:  # in declaration order: sip is checked first
        op.parse(_request({"sip": ["1 000"], "trunk": ["101"]}), {}, rules)
    assert info.value.code == "invalid_sip"


def test_a_json_null_of_a_repeatable_parameter_is_left_out():
    """``{"status": null}`` (found by the schema fuzzer on sipList) is the
    parameter left out, as for every other parameter."""
    op = Operation(
        methods=("POST",), path="/x", summary="x", tag="x", answers=(Answer(200, "ok"),),
        params=(word_list("status", "states", ("online", "offline")),),
    )  # fmt: skip
    alone = ApiRequest(None, method="POST", path="/x", fmt="json",
                       params=Params({"status": [None]}))  # fmt: skip
    assert op.parse(alone) == {"status": None}
    among = ApiRequest(None, method="POST", path="/x", fmt="json",
                       params=Params({"status": [None, "online"]}))  # fmt: skip
    assert op.parse(among) == {"status": frozenset({"online"})}
