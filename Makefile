# dustgate — the two commands a newcomer needs: `make demo` and `make test`.
# Both bootstrap what they need on a fresh Debian 12/13 machine: Debian's
# mosquitto and influxdb packages (as root, or through sudo) and a .venv with
# dustgate installed editable plus its dev extras.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dustgate-installed
DEBS := mosquitto influxdb shellcheck chromium fonts-liberation
# Wanted, but not packaged for every Debian release: the tests that need one say
# so and skip where it cannot be installed.
OPTIONAL_DEBS := victoria-metrics
PYTEST_ARGS ?=

.PHONY: all deps venv test lint typecheck demo bench soak clean check-examples

all: test

# Debian packages, installed only when missing; `apt-get update` once first.
deps:
	@bash deploy/bootstrap-debs.sh $(DEBS)
	@bash deploy/bootstrap-debs.sh $(OPTIONAL_DEBS) || \
	  echo "dustgate: optional $(OPTIONAL_DEBS) not installed; the tests needing it skip"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "dustgate needs Python >= 3.11 (found $$($(PYTHON) -V))"; exit 1; }
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV) || { \
	  echo "python3 -m venv failed: installing python3-venv"; \
	  bash deploy/bootstrap-debs.sh python3-venv && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: venv
	$(VENV)/bin/mypy gateway drivers rules

check-examples: venv
	$(VENV)/bin/dustgate check examples/site.yaml examples/rules.yaml examples/console.yaml examples/incidents.yaml

test: deps venv lint typecheck check-examples
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: deps venv
	$(VENV)/bin/dustgate demo $(DEMO_ARGS)

bench: deps venv
	@for b in tests/bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# real-time scenarios too slow for CI (each says what it runs and its fake-clock twin in CI)
soak: deps venv
	@for s in tests/soak/soak_*.py; do echo "== $$s"; $(PY) $$s || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis demo-data *.egg-info
