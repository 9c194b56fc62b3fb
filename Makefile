# agi_app — the two commands a newcomer needs:
#   make run    the service with the sandbox PBX and demo phones (or your own PBX, see README)
#   make test   everything: system packages, venv, sandbox PBX, lint, unit and end-to-end tests
#
# Both work on a fresh Debian machine as root (the sandbox PBX is built with
# debootstrap into $(AGI_APP_SANDBOX_CACHE), default /var/cache/agi_app/sandbox).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= agi_app.conf
PYTEST_ARGS ?=

.PHONY: all venv system-deps sandbox run test test-unit test-e2e lint bench clean sounds

all: test

# Host packages the sandbox and the tests need; installed only when missing
# (postgresql: the store's tests run on a throwaway PostgreSQL cluster too;
# chromium: the widget and dashboard pages are tested in it; nodejs and
# php-cli: the webhook signature snippets of docs/events.md are run in them;
# dnsmasq-base: the DNS server behind a sandbox's hagi:// FastAGI failover,
# the binary only, no system service).
SYSTEM_PACKAGES := debootstrap sip-tester chromium postgresql nodejs php-cli dnsmasq-base
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "make: need root to install:$$missing" >&2; exit 1; fi; \
	  echo "make: installing$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $@

venv: $(VENV)/.installed

sandbox: venv system-deps
	$(BIN)/agi-app sandbox provision

# The main job: your own PBX when $(CONFIG) exists, otherwise the sandbox
# PBX with demo phones.  Ctrl-C stops everything it started.
run: venv
	@if [ -f "$(CONFIG)" ]; then \
	  exec $(BIN)/agi-app serve --config "$(CONFIG)"; \
	else \
	  $(MAKE) --no-print-directory system-deps && exec $(BIN)/agi-app demo; \
	fi

lint: venv
	$(BIN)/ruff check .

test-unit: venv
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

test-e2e: sandbox
	$(BIN)/python -m pytest tests/e2e $(PYTEST_ARGS)

test: venv system-deps sandbox lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: venv
	$(BIN)/python bench/agi_throughput.py

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache *.egg-info
