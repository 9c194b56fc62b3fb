#!/usr/bin/env bash
# Build agi_app's wheel offline, install it into a fresh virtualenv the way
# docs/operations.md tells an admin to, and check that `agi-app serve` runs
# from it: the HTTP API answers /health, the widget script (package data) is
# served, the dialplan and prompts (data files) are where `agi-app` finds
# them, and SIGTERM stops it cleanly.
#
# Usage: tools/check_wheel.sh [--offline] [--deps-from SITE_PACKAGES]
#   (none)           pip wheel --no-deps -w dist . as docs/operations.md says
#                    (pip fetches setuptools and wheel for the build), then
#                    pip install of the wheel with its dependencies
#   --offline        build with the setuptools and wheel of $PYTHON
#                    (--no-build-isolation --no-index): no network for the build
#   --deps-from DIR  take the dependencies (Twisted...) from that
#                    site-packages folder instead of installing them from the
#                    package index: with --offline the check needs no network
#                    at all (the tests pass the project's own venv)
# Environment: PYTHON (default python3), KEEP=1 keeps the work folder.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
deps_from=""
build=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --offline) build=(--no-build-isolation --no-index); shift ;;
    --deps-from) deps_from="$2"; shift 2 ;;
    *) echo "usage: $0 [--offline] [--deps-from SITE_PACKAGES]" >&2; exit 2 ;;
  esac
done

work="$(mktemp -d /tmp/agi_app-wheel.XXXXXX)"
pid=""
cleanup() {
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
  if [[ "${KEEP:-}" != 1 ]]; then rm -rf "$work"; else echo "check_wheel: kept $work"; fi
}
trap cleanup EXIT
say() { echo "check_wheel: $*"; }
fail() { echo "check_wheel: FAILED: $*" >&2; [[ -f "$work/serve.log" ]] && tail -20 "$work/serve.log" >&2; exit 1; }

# 1. The wheel, built from a copy of the tree (the build writes build/ and
# *.egg-info beside the sources).
say "building the wheel"
mkdir "$work/src"
tar -C "$root" --exclude=./.venv --exclude=./.git --exclude=./var --exclude=./build \
  --exclude=./dist --exclude='*.egg-info' --exclude=__pycache__ -cf - . | tar -C "$work/src" -xf -
"$python" -m pip wheel --quiet --no-deps "${build[@]}" -w "$work/dist" "$work/src" \
  >"$work/wheel.log" 2>&1 || { cat "$work/wheel.log" >&2; fail "pip wheel"; }
wheel="$(ls "$work"/dist/agi_app-*.whl)"
say "built $(basename "$wheel")"

# 2. A fresh virtualenv with the wheel installed (by the building Python's
# pip: a venv without its own pip is made in a moment, ensurepip is slow).
"$python" -m venv --without-pip "$work/venv"
pip=("$python" -m pip --python "$work/venv/bin/python" install --quiet)
if [[ -n "$deps_from" ]]; then
  site="$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  # A plain path (no .pth of that folder runs): an editable checkout installed
  # there is not importable, so agi_app can only come from the wheel.
  echo "$deps_from" > "$site/zz-agi-app-deps.pth"
  "${pip[@]}" --no-deps --no-index "$wheel"
else
  "${pip[@]}" "$wheel"
fi
cd "$work"  # not the checkout: nothing may be found there by accident
where="$("$work/venv/bin/python" -c 'import agi_app; print(agi_app.__file__)')"
[[ "$where" == "$work/venv/"* ]] || fail "agi_app imported from $where, not from the wheel"
[[ -f "$work/venv/share/agi_app/dialplan/extensions.conf" ]] || fail "dialplan not installed"
"$work/venv/bin/agi-app" install-sounds "$(mkdir -p "$work/sounds" && echo "$work/sounds")" \
  >/dev/null || fail "agi-app install-sounds"
[[ -f "$work/sounds/en/agi_app/please-wait.wav" ]] || fail "prompts not installed"
say "installed: $where"

# 3. agi-app serve on free loopback ports; the AMI port is closed, so the
# service runs degraded (/health 503) -- everything else must work.
read -r http agi ws < <("$work/venv/bin/python" - <<'EOF'
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
EOF
)
cat > "$work/agi_app.conf" <<EOF
[ami]
port = 1
[agi]
listen = tcp:$agi:interface=127.0.0.1
[http]
listen = tcp:$http:interface=127.0.0.1
public_url = http://127.0.0.1:$http
[websocket]
listen = tcp:$ws:interface=127.0.0.1
[store]
path = $work/var/agi_app.sqlite3
[log]
format = json
EOF
"$work/venv/bin/agi-app" serve --config "$work/agi_app.conf" >"$work/serve.log" 2>&1 &
pid=$!
"$work/venv/bin/python" - "$http" <<'EOF' || fail "the HTTP API did not answer"
import json, sys, time, urllib.error, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}"
deadline = time.monotonic() + 30
while True:
    try:
        urllib.request.urlopen(base + "/health", timeout=2)
        raise SystemExit("/health answered 200 with the AMI down")
    except urllib.error.HTTPError as e:
        body = json.loads(e.read())
        assert e.code == 503 and body["status"] == "degraded", (e.code, body)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.2)
script = urllib.request.urlopen(base + "/static/prostiezvonki.js", timeout=5).read()
assert b"prostiezvonki" in script
metrics = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
assert 'agi_app_ami_connected{pbx="default"} 0.0' in metrics, metrics[:500]
EOF
say "serving: /health 503 (AMI down), /static/prostiezvonki.js and /metrics answer"

kill -TERM "$pid"
for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$pid" 2>/dev/null; then fail "agi-app serve did not stop on SIGTERM"; fi
wait "$pid" && status=0 || status=$?
pid=""
[[ "$status" == 0 ]] || fail "agi-app serve exited with $status"
grep -q '"message":"agi_app ' "$work/serve.log" || fail "no JSON start line in the log"
say "ok: stopped cleanly on SIGTERM, JSON log lines"
