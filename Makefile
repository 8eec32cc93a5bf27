# Two commands: `make run` and `make test`. Everything they need is installed from here.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PORT ?= 8000
DATAPLANE_CONTROL_PORT ?= 9901
DATAPLANE_WORKERS ?= 2
# Generated secrets, SQLite, the embedded broker, the node's state and the logs.
VAR_DIR ?= $(CURDIR)/var
export PORT DATAPLANE_CONTROL_PORT DATAPLANE_WORKERS VAR_DIR

# The test suite runs against this machine's PostgreSQL and Redis.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/ferry
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15
TEST_ENV = DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) DJANGO_ALLOW_ASYNC_UNSAFE=true

.PHONY: run test bench lint setup chromium clean

# The dataplane's hot path is compiled by Cython beside its .py sources (setup.py); a build is
# incremental, and a stale extension is never imported (dataplane/compiled.py).
# FERRY_PURE_PYTHON=1 skips compiling and runs every module from its source.
HOT_PATH := $(wildcard dataplane/*.py dataplane/*.pxd dataplane/*.pyx dataplane/protocols/*.py dataplane/protocols/*.pxd)

$(STAMP): pyproject.toml setup.py dataplane/nghttp2.pyx dataplane/tlsrecords.pyx
	@# nghttp2's and OpenSSL's headers and libraries, for the HTTP/2 engine's binding
	@# (dataplane/nghttp2.pyx) and the TLS record pump (dataplane/tlsrecords.pyx).
	@if [ ! -f /usr/include/nghttp2/nghttp2.h ] || [ ! -f /usr/include/openssl/ssl.h ]; then \
	  echo "Installing Debian's libnghttp2-dev and libssl-dev for the native bindings"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libnghttp2-dev libssl-dev; \
	fi
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

$(VENV)/.compiled: $(STAMP) $(HOT_PATH)
	$(BIN)/python setup.py --quiet build_ext --inplace
	touch $@

setup: $(VENV)/.compiled

run: $(VENV)/.compiled
	mkdir -p $(VAR_DIR)/dataplane
	test -s $(VAR_DIR)/dataplane/token || $(BIN)/python -c "import secrets; print(secrets.token_urlsafe(32))" > $(VAR_DIR)/dataplane/token
	chmod 600 $(VAR_DIR)/dataplane/token
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py collectstatic --noinput --verbosity 0
	$(BIN)/python manage.py bootstrap --node-token-file $(VAR_DIR)/dataplane/token --node-url http://127.0.0.1:$(DATAPLANE_CONTROL_PORT)
	@echo "Console: http://127.0.0.1:$(PORT)/  (Ctrl-C stops every process, each after its drain)"
	umask 077 && exec $(BIN)/python deploy/foreground.py $(BIN)/supervisord --configuration supervisord.conf --user $$(id -u)

# Debian's Chromium for the browser tests (Playwright cannot download its own build here), and
# nghttp2's h2load, the HTTP/2 client the tests drive listeners with.
chromium:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/h2load ] || [ ! -x /usr/bin/testssl ] || [ ! -x /usr/bin/pebble ]; then \
	  echo "Installing Debian's chromium, nghttp2-client, testssl.sh and pebble (a test ACME CA) for the tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium nghttp2-client testssl.sh pebble; \
	fi

# Browser tests run in their own pytest process: Playwright's sync API keeps an event loop
# running in the main thread for the whole session, which the asyncio dataplane tests cannot
# share.
test: $(VENV)/.compiled chromium
	$(BIN)/ruff check .
	$(TEST_ENV) $(BIN)/pytest -q -m "not e2e"
	@# The dataplane again from its Python sources: the two forms must never diverge.
	$(TEST_ENV) FERRY_PURE_PYTHON=1 $(BIN)/pytest -q -m "not e2e" tests/dataplane
	$(TEST_ENV) $(BIN)/pytest -q -m e2e

# Benchmarks against HAProxy and nginx (bench/README.md); QUICK=1 for a two-minute run. The
# regression guard at its end fails when a ratio falls >15% below bench/results/baseline.json.
# INSTRUCTIONS=1 counts instructions per request under callgrind instead (python -m bench
# --instructions).
bench: $(VENV)/.compiled
	$(BIN)/python -m bench $(if $(INSTRUCTIONS),--instructions,$(if $(QUICK),--quick,))

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) var *.egg-info
