"""Hypothesis profiles: `ci` (the default of `make test`) is derandomized and runs 200 examples,
so CI is stable and a failure reproduces exactly; `dev` is quicker and explores new examples.
Tests of the PostgreSQL log share one throwaway server, started when the first asks for it."""

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from simulations.throwaway_postgres import ThrowawayPostgres

settings.register_profile(
    "ci",
    max_examples=200,
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev", max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(scope="session")
def postgres() -> Iterator[ThrowawayPostgres]:
    """One throwaway PostgreSQL server for the whole run, on a unix socket, removed after it."""
    with ThrowawayPostgres() as server:
        yield server


@pytest.fixture
def postgres_url(postgres: ThrowawayPostgres) -> str:
    """The URL of a new, empty database of its own."""
    return postgres.new_database()
