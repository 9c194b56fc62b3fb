"""docs/events.md's webhook signature test vectors are what agi_app's signing
code makes, and every verification snippet there (Python, Node.js, PHP)
accepts them and refuses them altered.

The snippets run in their own runtimes (``node``, ``php``: Debian's nodejs
and php-cli, installed by ``make test``).  Without one a local run skips
that language; under ``CI=true`` a missing runtime fails."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agi_app.client import verify_signature as client_verify
from agi_app.events.signing import sign

DOC = Path(__file__).resolve().parents[2] / "docs" / "events.md"
_ROW = re.compile(r"^\| `([^`]*)` \| (\d+) \| `([^`]*)` \| `([^`]*)` \|$")


def _section(title: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index(f"#### {title}\n")
    end = re.compile(r"^#{2,4} ", re.M).search(text, start + 1)
    return text[start:end.start() if end else None]


def vectors() -> list[tuple[str, int, str, str]]:
    """``(secret, t, payload, X-Signature)`` of each line of the table."""
    rows = [m.groups() for line in _section("Test vectors").splitlines()
            if (m := _ROW.match(line))]  # fmt: skip
    return [(secret, int(t), payload, header) for secret, t, payload, header in rows]


def snippets() -> dict[str, str]:
    """The verification snippets by fence language."""
    found = re.findall(r"```(\w+)\n(.*?)```", _section("Verifying"), re.S)
    out: dict[str, str] = {}
    for language, code in found:
        assert language not in out, f"two {language} snippets"
        out[language] = code
    return out


def cases() -> list[dict[str, Any]]:
    """Each vector as sent (accepted), and altered in every way that must be refused."""
    out = []
    for secret, t, payload, header in vectors():
        v1 = header.split("v1=", 1)[1]
        flipped = ("0" if v1[0] != "0" else "1") + v1[1:]
        base = {"secret": secret, "header": header, "payload": payload, "now": t}
        out += [
            {**base, "expect": True},
            {**base, "now": t + 299, "expect": True},
            {**base, "now": t - 299, "expect": True},
            {**base, "now": t + 301, "expect": False},  # a replay, too late
            {**base, "payload": payload + "&x=1", "expect": False},
            {**base, "payload": payload.replace("+", "%20") if "+" in payload else payload[:-1],
             "expect": False},
            {**base, "header": f"t={t},v1={flipped}", "expect": False},
            {**base, "header": f"t={t + 1},v1={v1}", "now": t + 1, "expect": False},
            {**base, "header": f"t={t}", "expect": False},
            {**base, "header": f"v1={v1}", "expect": False},
            {**base, "secret": secret + "x", "expect": False},
        ]
    return out


def test_the_table_has_vectors_and_each_is_agi_apps_own_signature() -> None:
    found = vectors()
    assert len(found) >= 3
    for secret, t, payload, header in found:
        assert sign(secret, payload.encode("utf-8"), t) == header
        assert client_verify(secret, header, payload, now=t)


def test_the_doc_has_a_snippet_for_python_node_and_php() -> None:
    assert set(snippets()) == {"python", "js", "php"}


def test_the_python_snippet() -> None:
    namespace: dict[str, Any] = {}
    exec(compile(snippets()["python"], "docs/events.md (python)", "exec"), namespace)
    verify = namespace["verify_signature"]
    for case in cases():
        got = verify(case["secret"], case["header"], case["payload"].encode(), now=case["now"])
        assert got is case["expect"], case


def _runtime(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed (make test installs it: SYSTEM_PACKAGES)")
        pytest.skip(f"{name} is not installed (make system-deps)")
    return path


def _run(argv: list[str], script: Path) -> list[bool]:
    run = subprocess.run([*argv, str(script)], input=json.dumps(cases()), capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_the_node_snippet(tmp_path: Path) -> None:
    node = _runtime("node")
    script = tmp_path / "verify.js"
    script.write_text(snippets()["js"] + (
        '\nconst cases = JSON.parse(require("fs").readFileSync(0, "utf8"));\n'
        "process.stdout.write(JSON.stringify(cases.map(\n"
        "  (c) => verifySignature(c.secret, c.header, Buffer.from(c.payload), c.now))));\n"
    ), encoding="utf-8")
    assert _run([node], script) == [c["expect"] for c in cases()]


def test_the_php_snippet(tmp_path: Path) -> None:
    php = _runtime("php")
    script = tmp_path / "verify.php"
    script.write_text(snippets()["php"] + (
        "\n$cases = json_decode(file_get_contents('php://stdin'), true);\n"
        "echo json_encode(array_map(fn($c) => verify_signature($c['secret'], $c['header'],"
        " $c['payload'], $c['now']), $cases));\n"
    ), encoding="utf-8")
    assert _run([php, "-n"], script) == [c["expect"] for c in cases()]
