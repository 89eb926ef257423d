# The two set-up commands of the README: `make demo` and `make test`.
# Both create or update .venv (Python 3.11+) and install the project first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test lint imports typecheck pytest bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed; run make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/sandrun demo

lint: $(STAMP)
	$(BIN)/ruff check worker plugins tests benchmarks examples celeryconfig.py

imports: $(STAMP)
	$(BIN)/lint-imports --no-cache

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -n 3 --dist loadfile

test: lint imports typecheck pytest

bench: $(STAMP)
	$(BIN)/python benchmarks/hooks.py
	$(BIN)/python benchmarks/auth.py
	$(BIN)/python benchmarks/sandbox.py
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/brokers.py
	$(BIN)/python benchmarks/scaling.py
	$(BIN)/python benchmarks/cli.py
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/logs.py
	$(BIN)/python benchmarks/consensus.py
	$(BIN)/python benchmarks/environments.py
	$(BIN)/python benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
