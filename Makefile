# `make demo` and `make test` work on a fresh machine: they install uv if it is missing, create
# the virtual environment from uv.lock, and run. `make test` also installs PostgreSQL's server
# programs if they are missing: the tests of the PostgreSQL log start a throwaway server.

UV := $(shell command -v uv 2>/dev/null)
ifeq ($(UV),)
UV := python3 -m uv
endif
RUN := $(UV) run --frozen
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
	$(RUN) ruff check .
	$(RUN) ruff format --check .

typecheck: bootstrap
	$(RUN) mypy

unit: bootstrap postgres
	scripts/run-tests $(RUN) pytest

postgres:
	scripts/ensure-postgres

clean:
	rm -rf .venv .mypy_cache .pytest_cache .ruff_cache .hypothesis
