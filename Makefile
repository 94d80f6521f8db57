# `make demo` and `make test` work on a fresh machine: they install uv if it is missing, create
# the virtual environment from uv.lock, and run. `make test` also installs PostgreSQL's server
# programs if they are missing: the tests of the PostgreSQL log start a throwaway server.

UV := $(shell command -v uv 2>/dev/null)
ifeq ($(UV),)
UV := python3 -m uv
endif
RUN := $(UV) run --frozen
PYTHON_SCRIPTS := $(shell grep -l '^\#!.*python' scripts/*)
# The scripts have no `.py`: ruff and mypy are given them by name, and mypy takes each for a
# module of its own name (every script is `__main__` otherwise).
export HYPOTHESIS_PROFILE ?= ci

.PHONY: demo test lint typecheck unit bootstrap postgres clean

bootstrap: .venv/.synced

.venv/.synced: pyproject.toml uv.lock
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --frozen
	touch $@

demo: bootstrap
	$(RUN) rejoin compare

test: lint typecheck unit

lint: bootstrap
	$(RUN) ruff check . $(PYTHON_SCRIPTS)
	$(RUN) ruff format --check . $(PYTHON_SCRIPTS)

typecheck: bootstrap
	$(RUN) mypy
	$(RUN) mypy --scripts-are-modules $(PYTHON_SCRIPTS)

unit: bootstrap postgres
	scripts/run-tests $(RUN) pytest

postgres:
	scripts/ensure-postgres

clean:
	rm -rf .venv .mypy_cache .pytest_cache .ruff_cache .hypothesis
