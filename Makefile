# MedLedger: `make run` starts a working node with demo data; `make test` runs lint and the suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | sha256sum | cut -c1-12)
PORT ?= 5000
export MEDLEDGER_CONFIG ?= development

.PHONY: setup browser vsftpd run consortium test lint db demo bench clean

$(STAMP): requirements.txt requirements-dev.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	@rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP)

db: setup
	$(BIN)/flask --app wsgi db upgrade
	$(BIN)/flask --app wsgi medledger node init

demo: db
	$(BIN)/flask --app wsgi medledger seed-demo

run: demo
	@echo "MedLedger portal: http://127.0.0.1:$(PORT)/   patient app: http://127.0.0.1:$(PORT)/app/"
	@# One worker unless a Socket.IO message queue joins several (docs/api.md, Matching and chat).
	PORT=$(PORT) EMBEDDED_FTP=1 WEB_CONCURRENCY=$${WEB_CONCURRENCY:-1} GUNICORN_THREADS=$${GUNICORN_THREADS:-16} \
	  $(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

# Three hospitals on 127.0.0.1:7000-7002 with demo data spread over them (docs/federation.md); Ctrl-C stops them.
# The consortium lives in instance/consortium; `rm -r instance/consortium` starts a new one.
consortium: setup
	$(BIN)/flask --app wsgi medledger consortium up --nodes 3 --base-port $${BASE_PORT:-7000} \
	  --data-dir instance/consortium --demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The browser tests drive Debian's chromium (never `playwright install`): installed when missing, as root or with sudo.
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then sudo=; \
	  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	  else echo "chromium is missing and cannot be installed (not root, no sudo): the browser tests will skip" >&2; exit 0; fi; \
	  $$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# The archive tests run Debian's vsftpd (tests/archive): installed when missing, as root or with sudo.
vsftpd:
	@command -v vsftpd >/dev/null || test -x /usr/sbin/vsftpd || { \
	  if [ "$$(id -u)" = 0 ]; then sudo=; \
	  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	  else echo "vsftpd is missing and cannot be installed (not root, no sudo): the vsftpd tests will skip" >&2; exit 0; fi; \
	  $$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq vsftpd >/dev/null; }

# One pytest worker per core (TEST_WORKERS=0 runs in one process); each has its own PostgreSQL database.
TEST_WORKERS ?= auto
# With TEST_DATABASE_URL on PostgreSQL, the tests that use that database. The others (core, browser,
# contract, multinode, supervision) never touch it: their nodes run on SQLite files, or on PostgreSQL
# databases of their own in every run, so the SQLite run has run them (tests/test_setup.py checks this).
DATABASE_TESTS := tests/portal tests/archive tests/test_setup.py
TEST_PATHS ?= $(if $(filter postgresql%,$(TEST_DATABASE_URL)),$(DATABASE_TESTS))
test: lint browser vsftpd
	MEDLEDGER_CONFIG=testing $(BIN)/pytest -n $(TEST_WORKERS) --dist worksteal --durations=25 $(TEST_PATHS)

# Every portal page and app screen of the demo, at phone and desktop size, saved by the accessibility walk
# (tests/browser/test_accessibility.py) into SCREENSHOTS_DIR; the few the README shows are copied to docs/screenshots.
SCREENSHOTS_DIR ?= instance/screenshots
README_SCREENSHOTS := portal-patient-history-desktop portal-new-record-desktop app-records-phone app-record-phone \
  app-access-phone
.PHONY: screenshots
screenshots: setup browser
	rm -rf $(SCREENSHOTS_DIR)
	SCREENSHOTS_DIR=$(abspath $(SCREENSHOTS_DIR)) MEDLEDGER_CONFIG=testing $(BIN)/pytest -q -p no:cacheprovider \
	  tests/browser/test_accessibility.py -k serious_violations
	@mkdir -p docs/screenshots
	for name in $(README_SCREENSHOTS); do cp $(SCREENSHOTS_DIR)/$$name.png docs/screenshots/; done
	@echo "screenshots of every page: $(SCREENSHOTS_DIR)/"

bench: setup
	MEDLEDGER_CONFIG=testing $(BIN)/python bench/ledger.py

# Locust load test of a real node (bench/load.py; needs Redis); LOAD_ARGS="--users 50 --duration 60" shortens it.
.PHONY: bench-load
bench-load: setup
	$(BIN)/python -m pip install --quiet -r requirements-bench.txt
	$(BIN)/python bench/load.py $(LOAD_ARGS)

clean:
	rm -rf $(VENV) instance .pytest_cache .ruff_cache
