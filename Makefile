# Two commands set everything up on a fresh machine (Python 3.11 + Node 20):
#   make test   install what is missing, then run the whole test suite
#   make run    install what is missing, then run the service on this machine
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
NODE_INSTALLED := node_modules/.package-lock.json

.PHONY: setup test run clean

setup: $(INSTALLED) $(NODE_INSTALLED)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): requirements.txt requirements-test.txt setup.py | $(BIN)/python
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt -r requirements-test.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

# --omit=optional: only statsd has optional packages (syslog, Windows service,
# hashring for its proxy), none of which the metrics test uses.
$(NODE_INSTALLED): package.json package-lock.json
	npm ci --no-audit --no-fund --omit=optional
	touch $@

test: setup
	$(BIN)/pytest

run: setup
	$(BIN)/connnode run

clean:
	rm -rf $(VENV) node_modules

# Benchmarks (bench/README.md): all of them, or one with BENCH=name.
BENCH ?=
BENCH_INSTALLED := $(VENV)/.bench-installed

$(BENCH_INSTALLED): bench/requirements.txt | $(INSTALLED)
	$(BIN)/pip install -q --disable-pip-version-check -r bench/requirements.txt
	touch $@

.PHONY: bench
bench: setup $(BENCH_INSTALLED)
	$(BIN)/python -m bench.run $(BENCH)
